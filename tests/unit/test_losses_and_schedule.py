"""Class weights, the loss with ignored pixels, the poly schedule with warm-up, and confusion-matrix metrics."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from dist_seg.config import IGNORE_INDEX, TrainingConfig
from dist_seg.eval.metrics import metrics_from_confusion, update_confusion
from dist_seg.train.losses import SegmentationLoss, class_weights
from dist_seg.train.schedule import lr_factor


def test_class_weights_balance_rare_classes_and_keep_loss_scale():
    counts = np.array([900, 90, 10, 0])
    for method in ("inverse", "inverse_sqrt", "median_frequency"):
        w = class_weights(counts, method).numpy()
        assert w[3] == 0  # absent class
        assert w[0] < w[1] < w[2]
        freq = counts / counts.sum()
        assert (w * freq).sum() == pytest.approx(1.0, rel=1e-5)
    inv = class_weights(counts, "inverse").numpy()
    # inverse frequency: every present class carries the same total weight
    assert inv[0] * 900 == pytest.approx(inv[2] * 10, rel=1e-5)
    assert class_weights(counts, "none") is None


def test_class_weights_exclude_void():
    w = class_weights(np.array([10, 10, 1000]), "inverse", void_index=2).numpy()
    assert w[2] == 0 and w[0] == pytest.approx(w[1])


def test_loss_ignores_ignore_index_and_sums_exactly():
    logits = torch.randn(2, 3, 4, 4)
    target = torch.randint(0, 3, (2, 4, 4))
    target[0, 0, :] = IGNORE_INDEX
    crit = SegmentationLoss(torch.tensor([1.0, 2.0, 0.5]))
    total, weight = crit.sum_and_weight(logits, target)
    assert (total / weight).item() == pytest.approx(crit(logits, target).item(), rel=1e-5)


def test_poly_schedule_with_warmup():
    cfg = TrainingConfig(output_dir=Path("o"), learning_rate=1.0, warmup_iters=10, min_lr=0.1, poly_power=1.0)
    assert lr_factor(0, 110, cfg) == pytest.approx(0.1)
    assert lr_factor(9, 110, cfg) == pytest.approx(1.0)
    assert lr_factor(10, 110, cfg) == pytest.approx(1.0)
    assert lr_factor(60, 110, cfg) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_factor(110, 110, cfg) == pytest.approx(0.1)


def test_confusion_and_metrics():
    conf = torch.zeros(3, 3, dtype=torch.int64)
    target = torch.tensor([0, 0, 1, 1, 2, IGNORE_INDEX])
    pred = torch.tensor([0, 1, 1, 1, 0, 2])
    update_confusion(conf, pred, target, 3)
    assert conf.sum() == 5  # ignored pixel not counted
    miou, acc, iou = metrics_from_confusion(conf.numpy(), ["a", "b", "c"], void_index=None)
    assert acc == pytest.approx(3 / 5)
    assert iou["a"] == pytest.approx(1 / 3) and iou["b"] == pytest.approx(2 / 3) and iou["c"] == 0
    assert miou == pytest.approx((1 / 3 + 2 / 3 + 0) / 3)
    miou_void, _, _ = metrics_from_confusion(conf.numpy(), ["a", "b", "c"], void_index=2)
    assert miou_void == pytest.approx(0.5)


def test_absent_class_is_nan_and_not_averaged():
    conf = np.array([[5, 0], [0, 0]])
    miou, _, iou = metrics_from_confusion(conf, ["a", "b"], None)
    assert math.isnan(iou["b"]) and miou == 1.0
