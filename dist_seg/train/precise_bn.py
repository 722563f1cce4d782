"""BatchNorm statistics that hold in eval mode: "precise BN" re-estimation and an eval/train gap check.

A BatchNorm layer's running statistics are an exponential average with a small momentum
(torchvision's MobileNetV3 uses 0.01): after a short run from scratch they still describe
the early, very different activations, and eval-mode outputs are poor although the
weights are fine. :func:`recompute_bn_stats` replaces them with the plain average over a
number of training batches at the current weights (a cumulative average: momentum
``1 / (k + 1)`` for batch ``k``). :func:`bn_eval_train_gap` measures how far eval-mode predictions are
from batch-statistics predictions, so the trainer can warn when they disagree badly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import Dataset

from ..config import IGNORE_INDEX, TrainingConfig
from ..eval.visualize import spread_indices
from ..models.batchnorm import batch_norms, batch_statistics
from ..runtime.device import Runtime
from ..runtime.distributed import DistContext
from ..telemetry.progress import Progress
from .augment import BatchPreparer

# Below this eval/train argmax agreement the trainer should warn.
BN_GAP_WARN_AGREEMENT = 0.8


@torch.no_grad()
def recompute_bn_stats(model: nn.Module, batches: Iterable[torch.Tensor], num_batches: int,
                       reduce_mean: Callable[[torch.Tensor], None] | None = None,
                       on_batch: Callable[[], None] | None = None) -> int:
    """Re-estimate every BatchNorm's running mean / variance over up to ``num_batches`` input batches.

    ``batches`` yields model inputs ready for the forward pass (on the device, normalised).
    Each batch counts equally, so the result is the dataset average when batches have one
    size. ``reduce_mean`` (e.g. an all-reduce divided by the world size) averages the new
    statistics across ranks so every replica keeps identical buffers. Weights, momenta and
    the model's train/eval mode are restored; returns the number of batches used. Dropout
    and other layers run in eval mode. ``on_batch`` is called after each batch (progress).
    """
    layers = batch_norms(model)
    if not layers or num_batches <= 0:
        return 0
    was_training = model.training
    momenta = [m.momentum for m in layers]
    for m in layers:
        m.reset_running_stats()
    # Only the BatchNorm layers train: dropout stays off, so the pass draws no random numbers
    # and a resumed run's random streams match an uninterrupted one's.
    model.eval()
    for m in layers:
        m.train()
    used = 0
    try:
        for x in batches:
            if used >= num_batches:
                break
            # The cumulative average, with the count kept on the host: momentum None would make
            # every BatchNorm read num_batches_tracked from the device on each forward.
            for m in layers:
                m.momentum = 1.0 / (used + 1)
            model(x)
            used += 1
            if on_batch is not None:
                on_batch()
    finally:
        for m, momentum in zip(layers, momenta, strict=False):
            m.momentum = momentum
        model.train(was_training)
    if reduce_mean is not None:
        for m in layers:
            reduce_mean(m.running_mean)
            reduce_mean(m.running_var)
    return used


@dataclass(frozen=True)
class BnGap:
    """Eval-mode vs batch-statistics predictions on one batch."""

    agreement: float  # fraction of pixels where both argmaxes agree
    eval_pixel_acc: float | None  # with labels: accuracy in eval mode
    train_pixel_acc: float | None  # with labels: accuracy with batch statistics

    @property
    def bad(self) -> bool:
        return self.agreement < BN_GAP_WARN_AGREEMENT

    def describe(self) -> str:
        text = f"eval-mode and batch-statistics predictions agree on {self.agreement:.0%} of pixels"
        if self.eval_pixel_acc is not None:
            text += f" (pixel accuracy {self.eval_pixel_acc:.2f} eval vs {self.train_pixel_acc:.2f} batch stats)"
        return text


def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    return out["out"] if isinstance(out, dict) else out


@torch.no_grad()
def bn_eval_train_gap(model: nn.Module, batch: torch.Tensor, target: torch.Tensor | None = None) -> BnGap:
    """Compare predictions with running statistics (eval) and with ``batch``'s own statistics.

    Only the BatchNorm layers switch to training mode for the second pass (dropout stays
    off, so any difference comes from the statistics), and their running statistics are
    restored afterwards: the check changes nothing. ``target`` (``[B, H, W]``, ``IGNORE_INDEX``
    ignored) adds both pixel accuracies.
    """
    was_training = model.training
    model.eval()
    try:
        eval_pred = _logits(model, batch).argmax(1)
        with batch_statistics(model):
            train_pred = _logits(model, batch).argmax(1)
    finally:
        model.train(was_training)
    agreement = (eval_pred == train_pred).float().mean().item()
    if target is None:
        return BnGap(agreement, None, None)
    valid = target != IGNORE_INDEX
    count = max(int(valid.sum()), 1)
    return BnGap(agreement, ((eval_pred == target) & valid).sum().item() / count,
                 ((train_pred == target) & valid).sum().item() / count)


# Wiring: training frames the way the trainer has them (uint8 frames through the BatchPreparer),
# un-augmented and at fixed, evenly spread indices, so the step draws no random numbers and an
# interrupted run that resumes sees the same statistics.

def training_batches(data: Dataset, prep: BatchPreparer, batch_size: int, num_batches: int,
                     ctx: DistContext) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Up to ``num_batches`` normalised, un-augmented batches of this rank's share of ``data``.

    Every rank gets the same number of batches (their statistics are averaged with collectives)
    and no batch holds a single frame: BatchNorm in training mode cannot normalise one sample's
    pooled features (ASPP's image pooling), so a remainder is dropped.
    """
    chosen = spread_indices(len(data), num_batches * batch_size * ctx.world_size)
    usable = _usable_per_rank(len(chosen), batch_size, ctx.world_size)
    if usable < 2:
        return
    indices = chosen[ctx.rank::ctx.world_size][:usable]
    for start in range(0, len(indices), batch_size):
        items = [data[i] for i in indices[start:start + batch_size]]
        images = torch.stack([item[0] for item in items])
        masks = torch.stack([item[1] for item in items])
        yield prep.eval_batch(images, masks)


def _usable_per_rank(chosen: int, batch_size: int, world_size: int) -> int:
    """Frames each rank uses of ``chosen``: whole batches (or one batch, if fewer frames), never one frame."""
    per_rank = chosen // world_size
    return per_rank - per_rank % batch_size if per_rank >= batch_size else per_rank


def bn_batch_count(frames: int, batch_size: int, num_batches: int, world_size: int) -> int:
    """How many batches :func:`training_batches` yields on each rank (for progress)."""
    chosen = min(frames, num_batches * batch_size * world_size)
    usable = _usable_per_rank(chosen, batch_size, world_size)
    return 0 if usable < 2 else -(-usable // batch_size)


def refresh_bn_stats(model: nn.Module, data: Dataset, prep: BatchPreparer, runtime: Runtime, ctx: DistContext,
                     batch_size: int, num_batches: int, on_batch: Callable[[], None] | None = None) -> int:
    """Re-estimate ``model``'s BatchNorm statistics on ``num_batches`` training batches per rank, averaged over ranks."""
    world = ctx.world_size

    def reduce_mean(tensor: torch.Tensor) -> None:
        ctx.all_reduce_sum(tensor).div_(world)

    inputs = (x for x, _y in training_batches(data, prep, batch_size, num_batches, ctx))
    with runtime.autocast():
        return recompute_bn_stats(model, inputs, num_batches, reduce_mean=reduce_mean if world > 1 else None,
                                  on_batch=on_batch)


def check_bn_gap(model: nn.Module, data: Dataset, prep: BatchPreparer, runtime: Runtime, ctx: DistContext,
                 batch_size: int, warn: Callable[[str], None]) -> None:
    """Warn (through ``warn``) when eval-mode and batch-statistics predictions disagree badly on a training batch."""
    batch = next(training_batches(data, prep, batch_size, 1, ctx), None)
    if batch is None:  # fewer than two training frames per rank: nothing to compare
        return
    x, y = batch
    with runtime.autocast():
        gap = bn_eval_train_gap(model, x, torch.nn.functional.interpolate(
            y.unsqueeze(1).float(), size=x.shape[-2:], mode="nearest").squeeze(1).long())
    if gap.bad:
        warn(f"BatchNorm: {gap.describe()} on training frames: the running statistics do not describe the "
             "current weights, so validation scores are too low. Set training.precise_bn_batches (e.g. 50) to "
             "re-estimate them before each validation")


def prepare_batch_norm(model: nn.Module, data: Dataset, prep: BatchPreparer, runtime: Runtime, ctx: DistContext,
                       tr: TrainingConfig, epoch_label: str, progress: Progress, warn: Callable[[str], None]) -> None:
    """Before a validation: precise BN (``training.precise_bn_batches``), else the gap check (``training.bn_check``)."""
    if tr.precise_bn_batches:
        batches = bn_batch_count(len(data), tr.batch_size, tr.precise_bn_batches, ctx.world_size)
        progress.start_phase(f"precise BN epoch {epoch_label} (re-estimating BatchNorm statistics)", batches)
        try:
            refresh_bn_stats(model, data, prep, runtime, ctx, tr.batch_size, tr.precise_bn_batches,
                             on_batch=progress.phase_step)
        finally:
            progress.end_phase()
    elif tr.bn_check:
        progress.start_phase(f"BN check epoch {epoch_label} (eval vs batch statistics)", 1)
        try:
            check_bn_gap(model, data, prep, runtime, ctx, tr.batch_size, warn)
            progress.phase_step()
        finally:
            progress.end_phase()
