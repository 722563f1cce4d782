"""The start-up summary: what this run will do, in one block of the log.

Everything a person checks before leaving a run alone (model and its cost, input and cache
sizes, classes, batch, precision, loader, threads, device) in one place, printed once by
rank 0 after the data is ready and before the first step.
"""

from __future__ import annotations

import copy
import platform
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..config import Config
from ..runtime.device import Runtime
from ..runtime.threads import ThreadChoice


def parameter_count(model: torch.nn.Module) -> int:
    """Number of parameters (trainable or not) of ``model``."""
    return sum(p.numel() for p in model.parameters())


def forward_flops(model: torch.nn.Module, image_size: tuple[int, int]) -> int | None:
    """FLOPs of one forward pass of a 1-image batch of ``image_size`` [H, W]; None when it cannot be counted.

    Counted on a copy of the model on the meta device, so nothing is computed or allocated;
    a custom model whose forward does not run on meta tensors gives None.
    """
    try:
        shadow = copy.deepcopy(model).to("meta").eval()
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            shadow(torch.empty(1, 3, *image_size, device="meta"))
        return int(counter.get_total_flops())
    except Exception:  # any failure only costs the summary one number
        return None


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model (or architecture) for a CPU run."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "CPU"


def hxw(size: tuple[int, int] | list[int]) -> str:
    """``[H, W]`` as ``HxW`` (heights first, as everywhere in dist_seg)."""
    return f"{size[0]}x{size[1]}"


@dataclass
class StartupFacts:
    """What the summary shows that only the run wiring knows."""

    parameters: int
    flops: int | None
    train_frames: int
    val_frames: int
    steps_per_epoch: int
    total_steps: int
    world_size: int
    loader: str
    threads: ThreadChoice
    inference_precision: str  # Runtime.precision of the visualisations and the final evaluation


def startup_summary(cfg: Config, runtime: Runtime, facts: StartupFacts) -> list[str]:
    """The summary's lines (printed under a ``run:`` heading)."""
    ds, tr, model = cfg.dataset, cfg.training, cfg.model
    flops = f"{facts.flops / 1e9:.1f} GFLOPs per image (forward)" if facts.flops is not None else "FLOPs n/a"
    void = f", {ds.void_class} ignored" if ds.void_class is not None else ", none ignored"
    cache = hxw(ds.cache_size or tr.image_size) if ds.use_cache else "off (files decoded every epoch)"
    precision = f"autocast {str(runtime.amp_dtype).removeprefix('torch.')}" if runtime.amp else "float32"
    compile_ = f"on ({runtime.compile_mode})" if runtime.compile else "off"
    global_batch = tr.batch_size * facts.world_size * tr.grad_accum_steps
    device = runtime.device
    return [
        f"  model     {model.type} / {model.backbone} | {facts.parameters / 1e6:.2f} M parameters | {flops} at "
        f"{hxw(tr.image_size)}",
        f"  input     {hxw(tr.image_size)} | cache {cache}",
        f"  classes   {ds.num_classes} ({ds.mask_format} masks{void})",
        f"  data      {facts.train_frames} train / {facts.val_frames} val frames | {facts.steps_per_epoch} steps per epoch, "
        f"{facts.total_steps} in total",
        f"  batch     {tr.batch_size} per rank x {facts.world_size} rank(s) x {tr.grad_accum_steps} accumulation "
        f"= global batch {global_batch}",
        f"  precision training {precision} | visualisations, final evaluation {facts.inference_precision} "
        f"(the predict / evaluate default) | channels_last {'on' if runtime.channels_last else 'off'} | compile {compile_}",
        f"  loader    {facts.loader}",
        f"  threads   torch intra-op {facts.threads.describe()}",
        f"  device    {device} ({device_name(device)}) x {facts.world_size} rank(s)",
    ]
