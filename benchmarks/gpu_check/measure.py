"""GPU check parts that measure inside the process: the environment, the step suite and the zoo's pairs.

All run in a worker child (``isolated``). The step suite (and the zoo part) steps the product's own training
step through :class:`benchmarks.harness.StepHarness`; FLOPs per image come from the
harness's ``FlopCounterMode`` count, the matmul peak from the env part (measured again here
when the env part did not run).
"""

from __future__ import annotations

import gc
import importlib.metadata
import importlib.util
import platform
import shutil
import statistics
import subprocess
import time

import torch
import torch._dynamo  # a function-local import would make `torch` local there (UnboundLocalError on GPUs)
from torch._dynamo.utils import counters as dynamo_counters

from dist_seg.config import ModelConfig
from dist_seg.runtime.device import tf32_enabled

from ..common import cpu_model, synchronize, usable_cores
from ..harness import StepHarness, StepVariant, matmul_peak_tflops
from ..sizes import model_config, pair_name
from .parts import NO_CUDA, PartContext

COPY_ITERATIONS = 20


def part_device(ctx: PartContext) -> torch.device:
    """The device a part measures: GPU 0, or the CPU in the smoke run; a GPU check without CUDA stops here."""
    if not ctx.on_gpu:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError(f"torch {torch.__version__} sees no CUDA device (CUDA build: {torch.version.cuda}); "
                           "run with --cpu-smoke on a machine without a GPU")
    return torch.device("cuda", 0)


def matmul_peak(ctx: PartContext, device: torch.device) -> float:
    """The env part's bf16 matmul peak (TFLOP/s), or one measured here (and said so) when it did not run."""
    peak = ctx.shared.get("matmul_peak_tflops")
    if peak is None:
        peak = statistics.median(matmul_peak_tflops(device, torch.bfloat16, ctx.sizes.matmul_n,
                                                    ctx.sizes.matmul_repeats))
        ctx.set(matmul_peak_note="measured here: the env part did not run")
    return peak


def env(ctx: PartContext) -> None:
    """Versions, the card and its driver, a bf16 matmul's TFLOP/s and a device-to-device copy's GB/s."""
    device = part_device(ctx)
    ctx.set(python=platform.python_version(), torch=torch.__version__, cpu=cpu_model(), cores=usable_cores(),
            cuda_runtime=torch.version.cuda or NO_CUDA, **_gpu_fields(device), **_library_versions(device))
    ctx.set(driver=_driver_fields(device))

    peak = matmul_peak_tflops(device, torch.bfloat16, ctx.sizes.matmul_n, ctx.sizes.matmul_repeats)
    median = statistics.median(peak)
    ctx.set(matmul_bf16={"n": ctx.sizes.matmul_n, "tflop_s_median": significant(median),
                         "tflop_s_max": significant(max(peak)), "repeats": len(peak)})
    ctx.share(matmul_peak_tflops=median)
    copy = copy_bandwidth(device, ctx.sizes.copy_mb)
    ctx.set(copy=copy)
    ctx.summary = (f"{ctx.fields.get('gpu_name') if ctx.on_gpu else 'CPU'}; bf16 matmul {median:.4g} TFLOP/s; "
                   f"copy {copy['gb_s']:.4g} GB/s")


def _gpu_fields(device: torch.device) -> dict:
    if device.type != "cuda":
        return {"gpu_name": NO_CUDA, "gpu_memory_mib": NO_CUDA, "compute_capability": NO_CUDA}
    props = torch.cuda.get_device_properties(device)
    return {"gpu_name": props.name, "gpu_memory_mib": props.total_memory // 2**20,
            "compute_capability": f"{props.major}.{props.minor}", "multiprocessors": props.multi_processor_count,
            "l2_cache_mib": round(getattr(props, "L2_cache_size", 0) / 2**20, 1),
            "bf16_supported": torch.cuda.is_bf16_supported(), "device_count": torch.cuda.device_count()}


def _library_versions(device: torch.device) -> dict:
    on_gpu = device.type == "cuda"
    cudnn = torch.backends.cudnn.version() if on_gpu and torch.backends.cudnn.is_available() else None
    nccl: object = NO_CUDA
    if on_gpu:
        try:
            version = torch.cuda.nccl.version()
            nccl = ".".join(map(str, version)) if isinstance(version, tuple) else str(version)
        except Exception as exc:  # a build without NCCL
            nccl = f"unavailable ({type(exc).__name__}: {exc})"
    try:
        torchvision = importlib.metadata.version("torchvision")
    except importlib.metadata.PackageNotFoundError:
        torchvision = "missing"
    return {"cudnn": cudnn if cudnn is not None else NO_CUDA, "nccl": nccl, "torchvision": torchvision}


def _driver_fields(device: torch.device) -> dict:
    """The driver as nvidia-smi and NVML (pynvml, optional) report it."""
    fields: dict[str, object] = {}
    smi = shutil.which("nvidia-smi")
    # Two queries: a field one driver does not know fails its whole query, and the first one matters most.
    for key, query in (("nvidia_smi", "name,driver_version,memory.total,memory.used"),
                       ("nvidia_smi_state", "clocks.sm,clocks.max.sm,temperature.gpu,power.draw")):
        fields[key] = _nvidia_smi(smi, query) if smi is not None else "not on PATH"
    if importlib.util.find_spec("pynvml") is None:
        fields["nvml"] = "pynvml not installed"
        return fields
    import pynvml

    try:
        pynvml.nvmlInit()
        try:
            version = pynvml.nvmlSystemGetDriverVersion()
            cuda_driver = pynvml.nvmlSystemGetCudaDriverVersion()
            fields["nvml"] = {"driver": version.decode() if isinstance(version, bytes) else version,
                              "cuda_driver": f"{cuda_driver // 1000}.{cuda_driver % 1000 // 10}"}
        finally:
            pynvml.nvmlShutdown()
    except Exception as exc:  # NVMLError subclasses: no driver on a CPU machine
        fields["nvml"] = f"unavailable ({type(exc).__name__}: {exc})" if device.type == "cuda" else NO_CUDA
    return fields


def _nvidia_smi(smi: str, query: str) -> str:
    try:
        done = subprocess.run([smi, f"--query-gpu={query}", "--format=csv,noheader"], capture_output=True, text=True,
                              timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"failed: {exc}"
    return done.stdout.strip() or done.stderr.strip() or f"exit {done.returncode}"


def copy_bandwidth(device: torch.device, megabytes: int) -> dict:
    """GB/s of ``tensor.copy_`` between two buffers on ``device``, counting bytes read plus bytes written."""
    numel = megabytes * 2**20 // 4
    source = torch.randn(numel, device=device)  # random data: zeros can take faster paths
    target = torch.empty_like(source)
    target.copy_(source)  # warm-up
    synchronize(device)
    start = time.perf_counter()
    for _ in range(COPY_ITERATIONS):
        target.copy_(source)
    synchronize(device)
    seconds = time.perf_counter() - start
    if not torch.equal(target[:4096], source[:4096]):
        raise RuntimeError("copy bandwidth: the copied buffer differs from its source")
    what = "device-to-device" if device.type == "cuda" else "host memory (no CUDA)"
    return {"gb_s": significant(2 * numel * 4 * COPY_ITERATIONS / seconds / 1e9), "buffer_mb": megabytes, "what": what}


def significant(value: float) -> float:
    """``value`` to 4 significant digits: TFLOP/s read 0.0003 on a CPU smoke run and 800 on a GPU."""
    return float(f"{value:.4g}")


# Reported in the order: eager fp32, + channels-last, + AMP bf16, + compile, all together.
STEP_VARIANTS = (
    StepVariant("eager fp32"),
    StepVariant("channels_last", channels_last=True),
    StepVariant("amp bf16", amp_dtype=torch.bfloat16),
    StepVariant("compile", compile=True),
    StepVariant("all: channels_last + amp bf16 + compile", channels_last=True, amp_dtype=torch.bfloat16,
                compile=True),
)
# Measured by priority, in case the budget runs short: the production setting first (its compilation
# takes a minute or more), then the eager baseline and the single switches, compile alone last.
MEASURE_ORDER = ("all: channels_last + amp bf16 + compile", "eager fp32", "channels_last", "amp bf16", "compile")


def step(ctx: PartContext) -> None:
    """images/s, achieved TFLOP/s, fraction of the matmul peak and peak memory of each step variant."""
    sizes = ctx.sizes
    device = part_device(ctx)
    peak = matmul_peak(ctx, device)
    ctx.set(model=sizes.step_model.describe(), matmul_peak_tflops=significant(peak),
            steps_per_repeat=sizes.step_steps, warmup_steps=sizes.step_warmup)
    results: dict[str, object] = {}
    flops_per_image: float | None = None
    compile_estimate = sizes.compile_estimate_s
    by_name = {variant.name: variant for variant in STEP_VARIANTS}
    for variant in (by_name[name] for name in MEASURE_ORDER):
        if variant.compile and not sizes.step_compile:
            results[variant.name] = "skipped: --cpu-smoke (compiling takes minutes on a CPU)"
            continue
        # The estimate covers warm-up plus the timed repeats; a compiled variant's is dominated by compilation.
        needed = compile_estimate if variant.compile else 10.0
        if ctx.remaining() < needed:
            results[variant.name] = f"skipped: {ctx.remaining():.0f} s left in the part's budget, needs ~{needed:.0f} s"
            ctx.set(variants=results)
            continue
        ctx.log(f"  step: {variant.name}")
        measured, flops_per_image = _measure(ctx, variant, device, peak, flops_per_image)
        results[variant.name] = measured
        if variant.compile:
            compile_estimate = measured["warmup_s"] * 1.2 + 10.0
        ctx.set(variants=results, gflop_per_image=significant(flops_per_image / 1e9))
    results = {variant.name: results[variant.name] for variant in STEP_VARIANTS}
    baseline = results.get("eager fp32")
    if isinstance(baseline, dict):
        for measured in results.values():
            if isinstance(measured, dict):
                measured["speedup_vs_eager_fp32"] = round(measured["images_per_s"] / baseline["images_per_s"], 3)
    ctx.set(variants=results)
    best = max((m for m in results.values() if isinstance(m, dict)), key=lambda m: m["images_per_s"], default=None)
    if best is not None:
        name = next(k for k, v in results.items() if v is best)
        ctx.summary = (f"best {name}: {best['images_per_s']:.4g} img/s, {best['achieved_tflop_s']:.4g} TFLOP/s "
                       f"= {best['fraction_of_matmul_peak']:.1%} of the matmul peak")


def _sync_free_steps(harness: StepHarness, steps: int) -> str:
    """Run ``steps`` steady-state steps with CUDA's sync debug mode at "error": the first host sync raises."""
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(steps):
            harness.step()
    except RuntimeError as exc:
        return f"host sync: {str(exc).splitlines()[0]}"
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return f"none in {steps} steps (set_sync_debug_mode error)"


def _measure(ctx: PartContext, variant: StepVariant, device: torch.device, peak_tflops: float,
             flops_per_image: float | None) -> tuple[dict, float]:
    sizes, spec = ctx.sizes, ctx.sizes.step_model
    on_gpu = device.type == "cuda"
    if on_gpu:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    if variant.compile:

        torch._dynamo.reset()  # each compiled variant compiles from scratch, not on the previous one's graphs
        dynamo_counters.clear()
    harness = StepHarness(spec, variant, device)
    if flops_per_image is None:
        flops_per_image = harness.flops_per_image()
        if on_gpu:  # the count runs an fp32 forward and backward outside the variant's settings
            torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    harness.run(1)
    first_step_s = time.perf_counter() - start
    if sizes.step_warmup > 1:
        harness.run(sizes.step_warmup - 1)
    warmup_s = time.perf_counter() - start
    graphs_after_warmup = dynamo_counters["stats"]["unique_graphs"]
    sync_check = _sync_free_steps(harness, sizes.step_steps) if on_gpu else NO_CUDA
    seconds: list[float] = []
    for _ in range(sizes.step_repeats):
        # One repeat at least; more only while the budget holds another.
        if seconds and ctx.remaining() < 2 * max(seconds):
            break
        seconds.append(harness.run(sizes.step_steps))
    images_per_s = statistics.median(sizes.step_steps * spec.batch_size / s for s in seconds)
    achieved = flops_per_image * images_per_s / 1e12
    measured = {
        "images_per_s": significant(images_per_s),
        "images_per_s_repeats": [significant(sizes.step_steps * spec.batch_size / s) for s in seconds],
        "achieved_tflop_s": significant(achieved),
        "fraction_of_matmul_peak": significant(achieved / peak_tflops),
        "first_step_s": round(first_step_s, 2),
        "warmup_s": round(warmup_s, 2),
        "peak_memory_allocated_mib": round(torch.cuda.max_memory_allocated(device) / 2**20) if on_gpu else NO_CUDA,
        "peak_memory_reserved_mib": round(torch.cuda.max_memory_reserved(device) / 2**20) if on_gpu else NO_CUDA,
        **variant.settings(),
        "tf32": on_gpu and tf32_enabled(),
        "steady_state_host_syncs": sync_check,
    }
    if variant.compile:
        measured["graph_breaks"] = sum(dynamo_counters["graph_break"].values())
        measured["graphs_compiled"] = graphs_after_warmup
        measured["recompiles_after_warmup"] = dynamo_counters["stats"]["unique_graphs"] - graphs_after_warmup
    del harness
    gc.collect()
    return measured, flops_per_image


ZOO_VARIANT = StepVariant("bf16 channels_last", channels_last=True, amp_dtype=torch.bfloat16)


def zoo(ctx: PartContext) -> None:
    """The zoo table's GPU columns: each pair's training images/s, TFLOP/s, MFU and peak memory (bf16, eager)."""
    sizes = ctx.sizes
    device = part_device(ctx)
    peak = matmul_peak(ctx, device)
    spec = sizes.zoo_model
    ctx.set(size=f"{spec.image_size[0]}x{spec.image_size[1]}", batch=spec.batch_size, settings=ZOO_VARIANT.settings(),
            steps=f"{sizes.step_warmup} warm-up + {sizes.zoo_steps} timed", matmul_peak_tflops=significant(peak))
    rows: dict[str, object] = {}
    for pair in sizes.zoo_pairs:
        name = pair_name(pair)
        if ctx.remaining() < 5.0:
            rows[name] = f"skipped: {ctx.remaining():.0f} s left in the part's budget"
            continue
        try:
            rows[name] = _zoo_row(ctx, model_config(pair), device, peak)
        except Exception as exc:  # a pair the installed libraries cannot build (the zoo extra missing) is reported
            rows[name] = f"skipped: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        ctx.set(pairs=rows)
        gc.collect()
        if ctx.on_gpu:
            torch.cuda.empty_cache()
    done = {k: v for k, v in rows.items() if isinstance(v, dict)}
    ctx.summary = ", ".join(f"{k} {v['images_per_s']:.4g} img/s ({v['fraction_of_matmul_peak']:.0%})"
                            for k, v in done.items()) + (f"; {len(rows) - len(done)} skipped" if len(done) < len(rows)
                                                         else "")


def _zoo_row(ctx: PartContext, model_cfg: ModelConfig, device: torch.device, peak_tflops: float) -> dict:
    sizes, spec = ctx.sizes, ctx.sizes.zoo_model
    harness = StepHarness(spec, ZOO_VARIANT, device, model_cfg=model_cfg)
    params = sum(p.numel() for p in harness.eager_model.parameters())
    flops = harness.flops_per_image()
    if device.type == "cuda":  # after the count, which runs in fp32 outside the variant's settings
        torch.cuda.reset_peak_memory_stats(device)
    harness.run(sizes.step_warmup)
    seconds = harness.run(sizes.zoo_steps)
    images_per_s = sizes.zoo_steps * spec.batch_size / seconds
    achieved = flops * images_per_s / 1e12
    return {"params_m": round(params / 1e6, 2), "train_gflop_per_image": significant(flops / 1e9),
            "images_per_s": significant(images_per_s), "achieved_tflop_s": significant(achieved),
            "fraction_of_matmul_peak": significant(achieved / peak_tflops),
            "peak_memory_allocated_mib": round(torch.cuda.max_memory_allocated(device) / 2**20)
            if device.type == "cuda" else NO_CUDA}
