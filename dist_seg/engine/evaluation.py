"""Validation: confusion matrix by bincount, all-reduced across ranks, and the metrics derived from it.

Each rank evaluates its own shard (the eval sampler shards without padding, so no frame
is counted twice); only the confusion matrix and two loss sums cross the network.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F

from ..config import IGNORE_INDEX
from .augment import BatchPreparer
from .distributed import DistContext
from .losses import SegmentationLoss
from .runtime import Runtime


@dataclass
class EvalResult:
    """Metrics of one evaluation pass over a split."""

    loss: float
    mean_iou: float
    pixel_acc: float
    iou: dict[str, float]  # NaN for classes absent from both prediction and labels
    confusion: np.ndarray  # [C, C], rows = label, cols = prediction
    frames: int


def update_confusion(confusion: torch.Tensor, pred: torch.Tensor, target: torch.Tensor,
                     num_classes: int) -> None:
    """Add the pixels of one batch to ``confusion`` (labelled pixels only)."""
    valid = target != IGNORE_INDEX
    index = target[valid] * num_classes + pred[valid]
    confusion += torch.bincount(index, minlength=num_classes * num_classes).view(num_classes, num_classes)


def metrics_from_confusion(confusion: np.ndarray, class_names: list[str],
                           void_index: int | None) -> tuple[float, float, dict[str, float]]:
    """(mean IoU, pixel accuracy, per-class IoU). mIoU averages classes that occur, void excluded."""
    conf = confusion.astype(np.float64)
    tp = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
    total = conf.sum()
    pixel_acc = float(tp.sum() / total) if total else float("nan")
    scored = [i for i in range(len(class_names)) if i != void_index and not math.isnan(iou[i])]
    mean_iou = float(np.mean(iou[scored])) if scored else float("nan")
    return mean_iou, pixel_acc, {name: float(iou[i]) for i, name in enumerate(class_names)}


@torch.no_grad()
def evaluate(model: torch.nn.Module, batches: Iterable, prep: BatchPreparer, runtime: Runtime,
             criterion: SegmentationLoss, ctx: DistContext, class_names: list[str],
             void_index: int | None, on_batch: Callable[[int], None] | None = None) -> EvalResult:
    """Evaluate ``model`` on this rank's shard and combine with the other ranks."""
    num_classes = len(class_names)
    device = prep.device
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, weight sum, frames
    was_training = model.training
    model.eval()
    try:
        for i, (images, masks, _paths) in enumerate(batches):
            x, y = prep.eval_batch(images, masks)
            with runtime.autocast():
                logits = model(x)["out"]
            if logits.shape[-2:] != y.shape[-2:]:
                logits = F.interpolate(logits.float(), size=y.shape[-2:], mode="bilinear", align_corners=False)
            loss_sum, weight_sum = criterion.sum_and_weight(logits, y)
            sums += torch.stack([loss_sum.double(), weight_sum.double(),
                                 torch.tensor(float(x.shape[0]), dtype=torch.float64, device=device)])
            update_confusion(confusion, logits.argmax(1), y, num_classes)
            if on_batch is not None:
                on_batch(i)
    finally:
        model.train(was_training)
    ctx.all_reduce_sum(confusion)
    ctx.all_reduce_sum(sums)
    conf = confusion.cpu().numpy()
    mean_iou, pixel_acc, iou = metrics_from_confusion(conf, class_names, void_index)
    loss_sum, weight_sum, frames = sums.tolist()
    loss = loss_sum / weight_sum if weight_sum else float("nan")
    return EvalResult(loss, mean_iou, pixel_acc, iou, conf, int(frames))
