"""Unit behaviour of the engine's pieces: loss weights, schedule, metrics, augmentation, checkpoints."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from dist_seg.config import IGNORE_INDEX, AugmentConfig, TrainingConfig
from dist_seg.engine import checkpoint as ckpt
from dist_seg.engine.augment import BatchPreparer, random_scale_crop_flip
from dist_seg.engine.evaluation import metrics_from_confusion, update_confusion
from dist_seg.engine.losses import SegmentationLoss, class_weights
from dist_seg.engine.schedule import lr_factor
from dist_seg.errors import CheckpointError


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


def test_augmentation_keeps_image_and_mask_aligned():
    # The image encodes each pixel's class as its intensity, so after any flip/zoom the
    # mask must still describe the resampled image exactly (away from padding).
    torch.manual_seed(0)
    h, w = 32, 48
    mask = torch.randint(0, 5, (2, h // 8, w // 8))
    mask = mask.repeat_interleave(8, 1).repeat_interleave(8, 2)  # blocky, so bilinear ~ nearest inside blocks
    x = mask.float().unsqueeze(1).repeat(1, 3, 1, 1)
    gen = torch.Generator().manual_seed(0)
    out_x, out_y = random_scale_crop_flip(x, mask, (24, 40), AugmentConfig(hflip=True, scale_min=0.5, scale_max=2.0),
                                          gen)
    assert out_x.shape == (2, 3, 24, 40) and out_y.shape == (2, 24, 40)
    labelled = out_y != IGNORE_INDEX
    assert labelled.any()
    agree = (out_x[:, 0].round().long() == out_y)[labelled].float().mean()
    assert agree > 0.9
    # control: the same check against a mask that is off by a flip fails clearly
    assert (out_x[:, 0].round().long() == out_y.flip(-1))[labelled].float().mean() < 0.6
    # zooming out by 2 shows the image in a quarter of the output: the rest is unlabelled padding with value 0
    pad_x, pad_y = random_scale_crop_flip(x + 1, mask, (h, w), AugmentConfig(hflip=False, scale_min=0.5,
                                                                             scale_max=0.5), gen)
    padded = pad_y == IGNORE_INDEX
    assert padded.float().mean().item() == pytest.approx(0.75, abs=0.05)
    assert (pad_x[:, 0][padded] == 0).float().mean() > 0.9


def test_augmentation_is_reproducible_and_flip_changes_output():
    x = torch.rand(4, 3, 16, 16)
    y = torch.randint(0, 3, (4, 16, 16))
    aug = AugmentConfig(hflip=True, scale_min=1.0, scale_max=1.0)
    a = random_scale_crop_flip(x, y, (16, 16), aug, torch.Generator().manual_seed(1))
    b = random_scale_crop_flip(x, y, (16, 16), aug, torch.Generator().manual_seed(1))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    flipped = [torch.equal(a[1][i], y[i].flip(-1)) for i in range(4)]
    same = [torch.equal(a[1][i], y[i]) for i in range(4)]
    assert all(f or s for f, s in zip(flipped, same)) and any(flipped)


def test_batch_preparer_normalises_and_maps_void():
    prep = BatchPreparer(torch.device("cpu"), torch.channels_last, (8, 8), void_index=2)
    images = torch.full((1, 3, 8, 8), 128, dtype=torch.uint8)
    masks = torch.tensor([[0, 1, 2, 2, 0, 1, 0, 0]] * 8, dtype=torch.uint8).unsqueeze(0)
    x, y = prep.eval_batch(images, masks)
    assert x.dtype == torch.float32 and x.is_contiguous(memory_format=torch.channels_last)
    assert abs(x[0, 0].mean().item() - (128 / 255 - 0.485) / 0.229) < 1e-4
    assert (y == IGNORE_INDEX).sum() == 16 and y.dtype == torch.int64


def test_checkpoint_rotation_best_mirror_and_weights_only(tmp_path):
    directory = tmp_path / "checkpoints"
    for epoch in range(1, 5):
        ckpt.save_checkpoint({"model": {"w": torch.ones(1) * epoch}, "epoch": epoch, "global_step": epoch,
                              "config": {}}, directory, ckpt.checkpoint_name(epoch), keep=2)
    names = [c.path.name for c in ckpt.list_checkpoints(directory)]
    assert names == ["epoch_0003.pth", "epoch_0004.pth"]
    ckpt.mirror_best(directory / "epoch_0004.pth", tmp_path / "best_model.pth")
    state = torch.load(tmp_path / "best_model.pth", weights_only=True)
    assert state["epoch"] == 4 and state["format"] == ckpt.FORMAT
    # a mid-epoch checkpoint sorts after its epoch's start
    ckpt.save_checkpoint({"model": {}, "epoch": 4, "global_step": 9, "config": {}}, directory,
                         ckpt.checkpoint_name(4, 7), keep=2)
    assert ckpt.list_checkpoints(directory)[-1].step == 7


def test_checkpoint_errors_name_the_file(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        ckpt.load_checkpoint(tmp_path / "nope.pth")
    good = tmp_path / "good.pth"
    ckpt.save_checkpoint({"model": {"w": torch.randn(100, 100)}, "epoch": 1, "global_step": 1, "config": {}},
                         tmp_path, good.name, keep=5)
    data = good.read_bytes()
    truncated = tmp_path / "epoch_trunc.pth"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        ckpt.load_checkpoint(truncated)
    foreign = tmp_path / "foreign.pth"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(CheckpointError, match="not written by dist_seg"):
        ckpt.load_checkpoint(foreign)


def test_rng_state_round_trip_is_weights_only_safe(tmp_path):
    torch.manual_seed(3)
    np.random.seed(3)
    state = ckpt.capture_rng_state()
    torch.save(state, tmp_path / "rng.pth")
    expected = (torch.rand(3), np.random.rand(3))
    ckpt.restore_rng_state(torch.load(tmp_path / "rng.pth", weights_only=True))
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1])
