"""How big each suite's measurements are: ``full`` (GPU machines), ``quick`` (small CPU runs), ``tiny`` (tests).

The model of the step, e2e, ddp and vram suites depends on the device, not on the size:
a GPU measures the production network (DeepLabV3+ ResNet-50 at 512x512), a CPU a small
one (ResNet-18 at 128x128) whose steps take a fraction of a second.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dist_seg.config import ModelConfig

# DAVID frames are 800x600 (H x W = 600 x 800).
FRAME_SIZE = (600, 800)


@dataclass(frozen=True)
class ModelSpec:
    """Network, input size and per-process batch of the training-step measurements."""

    backbone: str
    image_size: tuple[int, int]
    batch_size: int

    def describe(self) -> str:
        return f"deeplabv3plus {self.backbone} {self.image_size[0]}x{self.image_size[1]} batch {self.batch_size}"


@dataclass(frozen=True)
class Sizes:
    """Every size knob of every suite for one preset."""

    name: str
    sequences: int  # scratch dataset: sequences x frames, each 800x600
    frames: int
    repeats: int  # timed repeats of every measurement (warm-up excluded)
    loader_size: tuple[int, int]  # (H, W) the loader serves
    loader_batch: int
    loader_workers: tuple[int, ...]
    loader_seconds: float  # minimum length of one timed repeat of a cached loader
    step_steps: int  # optimizer steps per timed repeat
    step_warmup: int
    compile: bool  # measure the torch.compile variants (each costs a compilation, ~30-60 s on a CPU)
    run_log_interval: int  # e2e / ddp: steps per throughput window; the first window is warm-up
    run_windows: int  # e2e / ddp: timed windows after the warm-up window
    run_workers: int | None  # e2e / ddp loader workers; None = half the cores, at most 8
    memory_workers: int
    # Small enough that even the small dataset has more batches per epoch than the loader
    # keeps buffers, so both sizes fill the buffer pool and only the dataset size differs.
    memory_batch: int
    memory_epochs: int
    vram_interval_s: float

    def model(self, device: torch.device) -> ModelSpec:
        if self.name == "tiny":
            return ModelSpec("resnet18", (64, 64), 2)
        if device.type == "cuda":
            return ModelSpec("resnet50", (512, 512), 16)
        return ModelSpec("resnet18", (128, 128), 4)


#: The model zoo table's pairs (benchmarks/zoo.py, the GPU check's zoo part): (model.type, model.arch,
#: model.backbone or model.encoder), from the smallest native model to SMP encoders from timm.
ZOO_PAIRS: tuple[tuple[str, str | None, str], ...] = (
    ("lraspp", None, "mobilenet_v3_large"),
    ("deeplabv3plus", None, "resnet18"),
    ("smp", "Unet", "resnet34"),
    ("smp", "FPN", "efficientnet-b0"),
    ("smp", "FPN", "tu-convnext_tiny"),
    ("smp", "Segformer", "mit_b0"),
)

Pair = tuple[str, str | None, str]


def pair_name(pair: Pair) -> str:
    """A folder name for a zoo pair: ``smp-FPN-tu-convnext_tiny``."""
    return "-".join(p for p in pair if p)


def model_config(pair: Pair) -> ModelConfig:
    """The ``model:`` section that builds a zoo pair."""
    model_type, arch, name = pair
    return ModelConfig(type="smp", arch=arch, encoder=name) if model_type == "smp" else \
        ModelConfig(type=model_type, backbone=name)


#: What each preset promises, printed when a run starts (run times depend on the machine and its load).
PROMISES = {
    "full": "sized for a GPU machine (production model, compile variants); on a CPU it takes hours",
    "quick": "small sizes, no compile variants: about a minute or two per suite on an idle 2-core CPU, "
             "more on a busy one",
    "tiny": "smallest sizes: seconds per suite, checks that the suites run (the numbers mean little)",
}

PRESETS = {
    "full": Sizes("full", sequences=4, frames=64, repeats=5, loader_size=(512, 512), loader_batch=16,
                  loader_workers=(0, 1, 2, 4, 8), loader_seconds=2.0, step_steps=20, step_warmup=5, compile=True,
                  run_log_interval=20, run_windows=4, run_workers=None, memory_workers=4, memory_batch=4,
                  memory_epochs=2, vram_interval_s=0.1),
    # No torch.compile variants: each cold compilation alone takes 30-60 s on a CPU, and a
    # quick run with them took 4 minutes for the step suite only.
    "quick": Sizes("quick", sequences=4, frames=16, repeats=3, loader_size=(512, 512), loader_batch=8,
                   loader_workers=(0, 1, 2), loader_seconds=0.5, step_steps=4, step_warmup=2, compile=False,
                   run_log_interval=4, run_windows=5, run_workers=0, memory_workers=2, memory_batch=2,
                   memory_epochs=2, vram_interval_s=0.1),
    "tiny": Sizes("tiny", sequences=4, frames=2, repeats=2, loader_size=(64, 64), loader_batch=2,
                  loader_workers=(0, 1), loader_seconds=0.05, step_steps=2, step_warmup=1, compile=False,
                  run_log_interval=1, run_windows=1, run_workers=0, memory_workers=1, memory_batch=1,
                  memory_epochs=1, vram_interval_s=0.05),
}
