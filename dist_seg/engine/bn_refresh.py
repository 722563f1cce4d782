"""BatchNorm statistics before validation: precise-BN re-estimation and the eval/train gap warning, wired.

:mod:`.precise_bn` holds the mechanisms; this module feeds them training frames the way
the trainer has them (a dataset of uint8 frames and the :class:`BatchPreparer`) and says
what it did. The frames are un-augmented and taken at fixed, evenly spread indices, so the
step draws no random numbers and an interrupted run that resumes sees the same statistics.
"""

from __future__ import annotations

from typing import Callable, Iterator

import torch
from torch import nn
from torch.utils.data import Dataset

from .augment import BatchPreparer
from .distributed import DistContext
from .precise_bn import bn_eval_train_gap, recompute_bn_stats
from .runtime import Runtime
from .visualize import spread_indices


def training_batches(data: Dataset, prep: BatchPreparer, batch_size: int, num_batches: int,
                     ctx: DistContext) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Up to ``num_batches`` normalised, un-augmented batches of this rank's share of ``data``.

    Every rank gets the same number of batches (their statistics are averaged with collectives)
    and no batch holds a single frame: BatchNorm in training mode cannot normalise one sample's
    pooled features (ASPP's image pooling), so a remainder is dropped.
    """
    chosen = spread_indices(len(data), num_batches * batch_size * ctx.world_size)
    per_rank = len(chosen) // ctx.world_size
    usable = per_rank - per_rank % batch_size if per_rank >= batch_size else per_rank
    if usable < 2:
        return
    indices = chosen[ctx.rank::ctx.world_size][:usable]
    for start in range(0, len(indices), batch_size):
        items = [data[i] for i in indices[start:start + batch_size]]
        images = torch.stack([item[0] for item in items])
        masks = torch.stack([item[1] for item in items])
        yield prep.eval_batch(images, masks)


def refresh_bn_stats(model: nn.Module, data: Dataset, prep: BatchPreparer, runtime: Runtime, ctx: DistContext,
                     batch_size: int, num_batches: int) -> int:
    """Re-estimate ``model``'s BatchNorm statistics on ``num_batches`` training batches per rank, averaged over ranks."""
    world = ctx.world_size

    def reduce_mean(tensor: torch.Tensor) -> None:
        ctx.all_reduce_sum(tensor).div_(world)

    inputs = (x for x, _y in training_batches(data, prep, batch_size, num_batches, ctx))
    with runtime.autocast():
        return recompute_bn_stats(model, inputs, num_batches, reduce_mean=reduce_mean if world > 1 else None)


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
