"""Training-step images/s of one model: eager float32 against channels-last, AMP, torch.compile and all together.

Each variant gets a fresh model with the same seed. Warm-up steps (which include
compilation for the compiled variants) are timed apart from the measured steps; the
device is synchronised before every clock read. Besides images/s each record has the
forward / backward / optimizer split, FLOPs per image (``FlopCounterMode``, forward +
backward) and the achieved FLOP rate as a fraction of a big bf16 matmul's rate measured
in the same run.
"""

from __future__ import annotations

import contextlib
import gc
import statistics
import warnings
from collections.abc import Iterator

import torch

from dist_seg.runtime.amp_policy import cpu_has_native_bf16
from dist_seg.runtime.device import tf32_enabled

from ..common import Record, ratio, timed
from ..context import Context
from ..harness import StepHarness, StepVariant, matmul_peak_tflops

NAME = "step"
TITLE = "Training step: eager fp32 vs channels-last, AMP, compile"
BASELINE = "eager fp32"


def native_dtype(device: torch.device) -> torch.dtype:
    """The fastest dtype ``device`` computes natively: bf16 on GPUs and on CPUs with bf16 instructions, else fp32.

    A CPU without ``avx512_bf16`` / ``amx_bf16`` emulates bf16, slower than fp32: measuring it
    there costs minutes and reports nothing a run would use.
    """
    return torch.bfloat16 if device.type == "cuda" or cpu_has_native_bf16() else torch.float32


def variants(device: torch.device, with_compile: bool) -> list[StepVariant]:
    """The variants measured on ``device``: bf16 autocast on a CPU that runs it natively, fp16 and bf16 on a GPU."""
    found = [StepVariant(BASELINE), StepVariant("channels_last", channels_last=True)]
    amp_dtypes = [torch.bfloat16] if native_dtype(device) == torch.bfloat16 else []
    if device.type == "cuda":
        amp_dtypes = [torch.float16] + ([torch.bfloat16] if torch.cuda.is_bf16_supported() else [])
    found += [StepVariant(f"amp {str(d).removeprefix('torch.')}", amp_dtype=d) for d in amp_dtypes]
    if with_compile:
        # "all" uses the last AMP dtype: bf16 wherever it is supported (the production setting).
        found += [StepVariant("compile", compile=True),
                  StepVariant("all: channels_last + " + ("amp + " if amp_dtypes else "") + "compile",
                              channels_last=True, amp_dtype=amp_dtypes[-1] if amp_dtypes else None, compile=True)]
    return found


@contextlib.contextmanager
def _cold_compile() -> Iterator[None]:
    """Compile from scratch: no dynamo state from an earlier variant, no inductor on-disk cache.

    Without this the reported compile time would depend on what earlier runs left in the
    cache (seconds instead of tens of seconds on a CPU).
    """
    import torch._inductor.config

    torch._dynamo.reset()
    with torch._inductor.config.patch(force_disable_caches=True), warnings.catch_warnings():
        # Dynamo says, once per compile, that disabling caches also disables its profile-guided recompiles.
        warnings.filterwarnings("ignore", message="dynamo_pgo force disabled")
        yield


def run(ctx: Context) -> list[Record]:
    sizes, device = ctx.sizes, ctx.device
    spec = sizes.model(device)
    matmul_n = 8192 if device.type == "cuda" else 1024
    dtype = native_dtype(device)
    short = {torch.bfloat16: "bf16", torch.float32: "fp32"}[dtype]
    peak = matmul_peak_tflops(device, dtype, matmul_n, sizes.repeats)
    records = [ctx.record(NAME, f"matmul peak {short}", "tflop_s", "TFLOP/s", peak,
                          {"matmul": f"{matmul_n}x{matmul_n} @ {matmul_n}x{matmul_n} {short}"})]
    peak_tflops = records[0].stats.median
    base_settings = {"model": spec.describe(), "steps_per_repeat": sizes.step_steps,
                     "warmup_steps": sizes.step_warmup, "cpu_threads": torch.get_num_threads(),
                     "compile_caches": "disabled (cold compile)",
                     "tf32": device.type == "cuda" and tf32_enabled()}
    flops_per_image: float | None = None
    for variant in variants(device, sizes.compile):
        ctx.log(f"  {variant.name}")
        harness = StepHarness(spec, variant, device)
        if flops_per_image is None:
            flops_per_image = harness.flops_per_image()
        with _cold_compile() if variant.compile else contextlib.nullcontext():
            warmup = [timed(harness.step, device) for _ in range(sizes.step_warmup)]
        seconds = [harness.run(sizes.step_steps) for _ in range(sizes.repeats)]
        images_per_s = [sizes.step_steps * spec.batch_size / s for s in seconds]
        phases = harness.phase_times(sizes.step_steps)
        median_ips = statistics.median(images_per_s)
        achieved = flops_per_image * median_ips / 1e12
        derived = {phase: round(statistics.median(ms), 2) for phase, ms in phases.items()}
        derived.update({
            "first_step_s": round(warmup[0], 3),
            "warmup_s": round(sum(warmup), 3),
            "gflop_per_image": round(flops_per_image / 1e9, 2),
            "achieved_tflop_s": round(achieved, 4),
            "fraction_of_matmul_peak": ratio(achieved, peak_tflops),
        })
        if variant.compile:
            # Warm-up time beyond what the same number of steady steps takes: compilation and autotuning.
            steady = statistics.median(seconds) / sizes.step_steps
            derived["compile_s"] = round(sum(warmup) - steady * len(warmup), 2)
        records.append(ctx.record(NAME, variant.name, "images_per_s", "images/s", images_per_s,
                                  {**base_settings, **variant.settings()}, derived))
        del harness
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()  # the next variant starts with the memory this one held
    baseline = next(r.stats.median for r in records if r.variant == BASELINE)
    for r in records[1:]:
        r.derived["speedup_vs_eager_fp32"] = ratio(r.stats.median, baseline)
    return records
