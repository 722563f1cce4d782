"""The trainer's real parts for one recipe, built tiny, for counting host syncs (see ``sync_counter``).

Shared by ``tests/unit/test_sync_free.py`` and the measurements in its report: each recipe
switch is the config section the trainer reads, turned into the same objects
``dist_seg.train.run`` builds (criterion, optimizer, EMA, TrainStep, BatchPreparer).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from dist_seg.config import AugmentConfig, BackendConfig, LossConfig, ModelConfig, PhotometricConfig, TrainingConfig
from dist_seg.models import build_model
from dist_seg.runtime.device import Runtime, resolve_runtime
from dist_seg.runtime.distributed import DistContext
from dist_seg.train.augment import BatchPreparer
from dist_seg.train.ema import ModelEma
from dist_seg.train.losses import SegmentationLoss, build_criterion
from dist_seg.train.step import TrainStep, build_optimizer

NUM_CLASSES = 13
IMAGE = (32, 32)
BATCH = 2


@dataclass(frozen=True)
class Recipe:
    """One recipe switch on top of the defaults."""

    loss: LossConfig = field(default_factory=LossConfig)
    photometric: bool = False
    ema: bool = False
    grad_clip_norm: float | None = None
    grad_accum_steps: int = 1
    grad_scaler: bool = False


RECIPES = {
    "default": Recipe(),
    "photometric": Recipe(photometric=True),
    "ema": Recipe(ema=True),
    "ohem": Recipe(loss=LossConfig(type="ohem", ohem_min_kept=600)),
    "dice": Recipe(loss=LossConfig(dice_weight=0.5)),
    "lovasz": Recipe(loss=LossConfig(lovasz_weight=0.5)),
    "grad_clip": Recipe(grad_clip_norm=1.0),
    "grad_accum": Recipe(grad_accum_steps=2),
    "grad_scaler": Recipe(grad_scaler=True, grad_clip_norm=1.0),
    "all": Recipe(loss=LossConfig(type="ohem", ohem_min_kept=600, dice_weight=0.5, lovasz_weight=0.5),
                  photometric=True, ema=True, grad_clip_norm=1.0, grad_accum_steps=2),
}


@dataclass
class Parts:
    """What the training loop holds for one run."""

    step: TrainStep
    prep: BatchPreparer
    augment: AugmentConfig
    generator: torch.Generator
    runtime: Runtime
    recipe: Recipe


class TinySegNet(torch.nn.Module):
    """Conv-BatchNorm-conv with the built-in models' ``{"out": logits}`` output: the recipe tests' fast model."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8),
                                        torch.nn.ReLU(), torch.nn.Conv2d(8, num_classes, 1))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": self.body(x)}


def cpu_context() -> DistContext:
    return DistContext(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"), backend=None)


def build_parts(recipe: Recipe, model_type: str = "deeplabv3plus", seed: int = 0) -> Parts:
    """Model, loss, optimizer, EMA and batch preparation for ``recipe``, as ``run._build_trainer`` wires them.

    ``model_type`` is a registered ``model.type`` (DeepLabV3+ on ResNet-18) or ``"tiny"`` (:class:`TinySegNet`).
    """
    torch.manual_seed(seed)
    device = torch.device("cpu")
    runtime = resolve_runtime(BackendConfig(target="cpu"), device, log=lambda _m: None)
    if model_type == "tiny":
        model: torch.nn.Module = TinySegNet(NUM_CLASSES)
    else:
        model = build_model(ModelConfig(type=model_type, backbone="resnet18" if model_type == "deeplabv3plus"
                                        else None), NUM_CLASSES)
    tr = dataclasses.replace(TrainingConfig(output_dir="unused"), learning_rate=1e-3,
                             grad_clip_norm=recipe.grad_clip_norm, grad_accum_steps=recipe.grad_accum_steps)
    optimizer = build_optimizer(model.parameters(), tr)
    weight = torch.rand(NUM_CLASSES) + 0.5
    criterion = build_criterion(recipe.loss, weight)
    ema = ModelEma(model, 0.99) if recipe.ema else None
    scaler = torch.amp.GradScaler("cpu", enabled=recipe.grad_scaler)
    step = TrainStep(model, criterion, optimizer, scaler, runtime.autocast, recipe.grad_clip_norm, ema=ema)
    augment = AugmentConfig(photometric=PhotometricConfig(enabled=recipe.photometric))
    prep = BatchPreparer(device, runtime.memory_format, IMAGE, void_index=12)
    return Parts(step, prep, augment, torch.Generator().manual_seed(seed + 1), runtime, recipe)


def loader_batches(count: int, seed: int = 0, batch: int = BATCH) -> list[tuple[torch.Tensor, torch.Tensor, list[str]]]:
    """``count`` uint8 batches as the loader yields them (images, masks with void pixels, paths)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(count):
        images = torch.randint(0, 256, (batch, 3, *IMAGE), generator=g, dtype=torch.uint8)
        masks = torch.randint(0, NUM_CLASSES, (batch, *IMAGE), generator=g, dtype=torch.uint8)
        out.append((images, masks, [f"Video_00{i % 2}/f{i:03d}_{j}.png" for j in range(batch)]))
    return out


def train_micro_batches(parts: Parts, batches, first_step: int = 1) -> list[torch.Tensor]:
    """Run the loop's per-micro-batch body (batch preparation + TrainStep) over ``batches``; returns the losses."""
    accum = parts.recipe.grad_accum_steps
    parts.step.model.train()
    losses = []
    for i, (images, masks, _paths) in enumerate(batches):
        x, y = parts.prep.train_batch(images, masks, parts.augment, parts.generator)
        losses.append(parts.step(x, y, step=first_step + i // accum, accum=accum, last_micro=(i + 1) % accum == 0))
    return losses


def val_criterion() -> SegmentationLoss:
    return SegmentationLoss(torch.rand(NUM_CLASSES, generator=torch.Generator().manual_seed(3)) + 0.5)
