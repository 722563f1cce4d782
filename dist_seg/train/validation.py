"""The training-time validation: every rank scores its shard at the cache resolution, then all-reduce.

Each rank evaluates its own shard (the eval sampler shards without padding, so no frame
is counted twice); only the confusion matrix, two loss sums and the flicker counts cross
the network. Validation scores masks at the cache resolution (``val/...``); the
native-resolution evaluation of a checkpoint is :mod:`dist_seg.eval.native`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..data.palette import Palette
from ..eval.inference import forward_logits, upsample_argmax, upsample_logits
from ..eval.metrics import metrics_from_confusion, update_confusion
from ..eval.video_metrics import VideoMetricsAccumulator
from ..eval.visualize import comparison_panel
from ..runtime.device import Runtime
from ..runtime.distributed import DistContext
from ..runtime.memory import memory_needed_by
from .augment import BatchPreparer
from .losses import SegmentationLoss


@dataclass
class EvalResult:
    """Metrics of one evaluation pass over a split."""

    loss: float
    mean_iou: float
    pixel_acc: float
    iou: dict[str, float]  # NaN for classes absent from both prediction and labels
    confusion: np.ndarray  # [C, C], rows = label, cols = prediction
    frames: int
    # Share of static-label pixels whose prediction changes between consecutive frames of a
    # sequence (see video_metrics); NaN when the shard held no two consecutive frames.
    flicker: float = math.nan



@torch.no_grad()
def evaluate(model: torch.nn.Module, batches: Iterable, prep: BatchPreparer, runtime: Runtime,
             criterion: SegmentationLoss, ctx: DistContext, class_names: list[str],
             void_index: int | None, on_batch: Callable[[int], None] | None = None,
             out_of_memory: tuple[str, str] | None = None) -> EvalResult:
    """Evaluate ``model`` on this rank's shard and combine with the other ranks.

    The flicker rate treats two frames served one after the other from the same folder as
    consecutive, so it needs a loader that serves each sequence's frames in order.

    With a compiled model (``runtime.compile``) a batch smaller than the first (a shard's last)
    is padded to the first's size and the padding's outputs are dropped before any metric: in
    eval mode samples do not interact, and the graph compiled for the full batch is reused
    instead of compiling another for one batch. ``out_of_memory`` (what, fix) turns running out of
    memory into a ConfigError naming the setting to lower.
    """
    num_classes = len(class_names)
    device = prep.device
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
    sums = torch.zeros(5, dtype=torch.float64, device=device)  # loss sum, weight sum, frames, static, flickering
    video = VideoMetricsAccumulator(window_sizes=(), device=device)
    was_training = model.training
    model.eval()
    full_batch = None
    guard = (memory_needed_by(out_of_memory[0], device, out_of_memory[1]) if out_of_memory is not None
             else contextlib.nullcontext())
    try:
        with guard:
            for i, (images, masks, paths) in enumerate(batches):
                x, y = prep.eval_batch(images, masks)
                full_batch = full_batch or x.shape[0]
                logits = upsample_logits(forward_logits(model, _padded(x, full_batch) if runtime.compile else x,
                                                        runtime)[:x.shape[0]], y.shape[-2:])
                loss_sum, weight_sum = criterion.sum_and_weight(logits, y)
                sums[:2] += torch.stack([loss_sum.double(), weight_sum.double()])
                sums[2] += x.shape[0]  # a host number: no blocking host -> device copy
                pred = logits.argmax(1)
                update_confusion(confusion, pred, y, num_classes)
                video.update(pred, y, [str(Path(p).parent) for p in paths])
                if on_batch is not None:
                    on_batch(i)
    finally:
        model.train(was_training)
    sums[3:] = video.flicker_counts()
    ctx.all_reduce_sum(confusion)
    ctx.all_reduce_sum(sums)
    conf = confusion.cpu().numpy()
    mean_iou, pixel_acc, iou = metrics_from_confusion(conf, class_names, void_index)
    loss_sum, weight_sum, frames, static, flickering = sums.tolist()
    loss = loss_sum / weight_sum if weight_sum else float("nan")
    return EvalResult(loss, mean_iou, pixel_acc, iou, conf, int(frames),
                      flickering / static if static else float("nan"))


def _padded(x: torch.Tensor, batch: int) -> torch.Tensor:
    """``x`` with zero samples appended up to ``batch`` (unchanged when it has that many or more)."""
    if x.shape[0] >= batch:
        return x
    pad = x.new_zeros((batch - x.shape[0], *x.shape[1:])).contiguous(memory_format=_memory_format(x))
    return torch.cat([x, pad])


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format


@torch.no_grad()
def visualization_panels(model: torch.nn.Module, frames: Sequence[int], data: Dataset, prep: BatchPreparer,
                         runtime: Runtime, palette: Palette, void_index: int | None,
                         on_frame: Callable[[], None] = lambda: None) -> list[tuple[str, np.ndarray]]:
    """Titled image | labels | prediction panels of ``data``'s frames at indices ``frames`` (no collectives)."""
    panels = []
    was_training = model.training
    model.eval()
    try:
        for i in frames:
            image, mask, path = data[i]
            x, y = prep.eval_batch(image.unsqueeze(0), mask.unsqueeze(0))
            pred = upsample_argmax(forward_logits(model, x, runtime), y.shape[-2:])[0]
            stem = Path(path).stem
            panels.append((stem, comparison_panel(image.permute(1, 2, 0).numpy(), mask.numpy(),
                                                  pred.cpu().numpy().astype(np.uint8), palette, name=stem,
                                                  void_index=void_index)))
            on_frame()
    finally:
        model.train(was_training)
    return panels
