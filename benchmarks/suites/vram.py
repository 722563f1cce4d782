"""Cost of the VRAM sampler thread: training-step time with the sampler on vs off.

The sampler runs with the trainer's sinks (memory log line + TensorBoard scalars) at a
short interval (0.1 s in quick/full runs, ten times the default rate) to magnify its
cost. "On" and "off" repeats alternate, and their order flips every repeat, so drift
(thermal, other load) hits both alike. On a CPU the sampler reads host RSS only; on a GPU
it also queries NVML / AMD SMI and the allocator.
"""

from __future__ import annotations

import torch

from dist_seg.telemetry.memlog import MemoryLog
from dist_seg.telemetry.tensorboard import RunWriter, TensorBoardVramSink
from dist_seg.telemetry.vram import VramSampler

from ..common import Record, ratio
from ..context import Context, quiet
from ..harness import StepHarness, StepVariant

NAME = "vram"
TITLE = "VRAM sampler overhead: step time with the sampler thread on vs off"


def run(ctx: Context) -> list[Record]:
    sizes, device = ctx.sizes, ctx.device
    spec = sizes.model(device)
    # The production precision on a GPU; plain fp32 on a CPU, where it is the steadier baseline.
    variant = (StepVariant("channels_last + amp bf16", channels_last=True, amp_dtype=torch.bfloat16)
               if device.type == "cuda" else StepVariant("eager fp32"))
    harness = StepHarness(spec, variant, device)
    for _ in range(sizes.step_warmup):
        harness.step()
    step_ms: dict[str, list[float]] = {"sampler off": [], "sampler on": []}
    samples_taken = 0
    out = ctx.suite_dir(NAME)
    with RunWriter(out / "tensorboard") as writer:
        for repeat in range(sizes.repeats):
            order = ("sampler off", "sampler on") if repeat % 2 == 0 else ("sampler on", "sampler off")
            for state in order:
                sampler = None
                if state == "sampler on":
                    sampler = VramSampler(0, device, sizes.vram_interval_s, "auto",
                                          sinks=[MemoryLog(out / "memory_diagnostics.log", 0),
                                                 TensorBoardVramSink(writer)], log=quiet).start()
                seconds = harness.run(sizes.step_steps)
                if sampler is not None:
                    sampler.stop()
                    samples_taken += sampler.peaks().samples
                step_ms[state].append(1e3 * seconds / sizes.step_steps)
    settings = {"model": spec.describe(), **variant.settings(), "interval_s": sizes.vram_interval_s,
                "steps_per_repeat": sizes.step_steps}
    off = ctx.record(NAME, "sampler off", "step_ms", "ms/step", step_ms["sampler off"], settings)
    on = ctx.record(NAME, "sampler on", "step_ms", "ms/step", step_ms["sampler on"], settings,
                    {"samples_taken": samples_taken})
    overhead = ratio(on.stats.median, off.stats.median)
    on.derived["step_time_vs_off"] = overhead
    on.derived["overhead_percent"] = None if overhead is None else round(100 * (overhead - 1), 2)
    return [off, on]
