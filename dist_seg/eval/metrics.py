"""Confusion matrix by bincount and the metrics derived from it (mIoU, pixel accuracy, fwIoU).

Shared by the training-time validation (:mod:`dist_seg.train.validation`), the
native-resolution evaluation (:mod:`dist_seg.eval.native`) and the visualisations.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..config import IGNORE_INDEX


def update_confusion(confusion: torch.Tensor, pred: torch.Tensor, target: torch.Tensor,
                     num_classes: int) -> None:
    """Add the pixels of one batch to ``confusion`` (labelled pixels only), without a host sync.

    Unlabelled pixels go to one extra bin that is dropped, so every shape is fixed; a scatter-add
    counts them, because CUDA's ``bincount`` reads ``max()`` on the host to size its output.
    """
    bins = num_classes * num_classes
    index = torch.where(target != IGNORE_INDEX, target * num_classes + pred, bins).flatten()
    counts = torch.zeros(bins + 1, dtype=confusion.dtype, device=confusion.device)
    counts.scatter_add_(0, index, torch.ones_like(index, dtype=confusion.dtype))
    confusion += counts[:bins].view(num_classes, num_classes)


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


def frequency_weighted_iou(confusion: np.ndarray, void_index: int | None) -> float:
    """Sum of each class's IoU weighted by its share of labelled pixels (void excluded)."""
    conf = confusion.astype(np.float64)
    tp = np.diag(conf)
    labelled = conf.sum(1)
    if void_index is not None:
        labelled[void_index] = 0
    union = conf.sum(0) + labelled - tp
    total = labelled.sum()
    if not total:
        return float("nan")
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, 0.0)
    return float((labelled / total * iou).sum())
