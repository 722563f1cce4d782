"""Unit behaviour of the engine's pieces: loss weights, schedule, metrics, augmentation, checkpoints, train step."""

from __future__ import annotations

import contextlib
import copy
import errno
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from support.helpers import tiny_config
from dist_seg.config import IGNORE_INDEX, AugmentConfig, TrainingConfig
from dist_seg.data.palette import Palette
from dist_seg import checkpoint_file as ckpt
from dist_seg.train.augment import BatchPreparer, random_scale_crop_flip
from dist_seg.train.checkpointer import Checkpointer, EpochPlan, TrainPosition
from dist_seg.runtime.distributed import DistContext
from dist_seg.eval.metrics import metrics_from_confusion, update_confusion
from dist_seg.train.losses import SegmentationLoss, class_weights
from dist_seg.train.metrics import EpochTotals, TrainMetrics
from dist_seg.train.outputs import RunOutputs
from dist_seg.train.schedule import lr_factor
from dist_seg.train.step import NonFiniteLossError, TrainStep, build_optimizer
from dist_seg.errors import CheckpointError

CPU = DistContext(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"), backend=None)


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


def _save(directory: Path, name: str) -> None:
    ckpt.save_checkpoint({"model": {}, "epoch": 0, "global_step": 0, "config": {}}, directory, name, keep=5)


def test_checkpoint_names_use_the_logs_one_based_epoch_and_old_names_still_sort(tmp_path):
    assert ckpt.checkpoint_name(2, 22) == "epoch_0003_batch_000022.pth"  # "epoch 3, batch 22"
    assert ckpt.checkpoint_name(3) == "epoch_0003.pth"  # 3 epochs completed
    directory = tmp_path / "checkpoints"
    _save(directory, "epoch_0002.pth")
    _save(directory, "epoch_0002_step_000021.pth")  # earlier naming: zero-based epoch, i.e. in epoch 3
    infos = ckpt.list_checkpoints(directory)
    assert [(c.path.name, c.epoch, c.step) for c in infos] == [("epoch_0002.pth", 2, None),
                                                               ("epoch_0002_step_000021.pth", 2, 21)]
    _save(directory, ckpt.checkpoint_name(2, 22))
    assert ckpt.list_checkpoints(directory)[-1].path.name == "epoch_0003_batch_000022.pth"


def test_mid_epoch_checkpoints_go_once_their_epoch_checkpoint_exists(tmp_path):
    directory = tmp_path / "checkpoints"
    _save(directory, ckpt.checkpoint_name(1))
    _save(directory, ckpt.checkpoint_name(1, 3))
    _save(directory, "epoch_0001_step_000004.pth")  # earlier naming
    assert len(ckpt.list_checkpoints(directory)) == 3
    _save(directory, ckpt.checkpoint_name(2))
    assert [c.path.name for c in ckpt.list_checkpoints(directory)] == ["epoch_0001.pth", "epoch_0002.pth"]


def test_best_mirror_shares_the_checkpoints_inode(tmp_path):
    directory = tmp_path / "checkpoints"
    _save(directory, ckpt.checkpoint_name(1))
    best = tmp_path / "best_model.pth"
    ckpt.mirror_best(directory / "epoch_0001.pth", best)
    assert best.stat().st_ino == (directory / "epoch_0001.pth").stat().st_ino


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


def test_best_mirror_is_a_hard_link_that_outlives_rotation(tmp_path):
    directory, best = tmp_path / "checkpoints", tmp_path / "best_model.pth"
    first = ckpt.save_checkpoint({"model": {}, "epoch": 1, "global_step": 1, "config": {}}, directory,
                                 ckpt.checkpoint_name(1), keep=2)
    ckpt.mirror_best(first, best)
    assert best.stat().st_ino == first.stat().st_ino
    for epoch in (2, 3):
        ckpt.save_checkpoint({"model": {}, "epoch": epoch, "global_step": epoch, "config": {}}, directory,
                             ckpt.checkpoint_name(epoch), keep=2)
    assert not first.exists()
    assert torch.load(best, weights_only=True)["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best_model.pth", "checkpoints"]


def test_best_mirror_is_copied_where_hard_links_fail(tmp_path, monkeypatch):
    source = ckpt.save_checkpoint({"model": {}, "epoch": 1, "global_step": 1, "config": {}}, tmp_path / "c",
                                  ckpt.checkpoint_name(1), keep=2)

    def no_links(*_args):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(ckpt.os, "link", no_links)
    ckpt.mirror_best(source, tmp_path / "best_model.pth")
    best = tmp_path / "best_model.pth"
    assert best.stat().st_ino != source.stat().st_ino and best.read_bytes() == source.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best_model.pth", "c"]


class _PixelNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": self.conv(x)}


@pytest.mark.parametrize("optimizer, clip", [("adamw", None), ("sgd", 1.0)])
def test_train_step_skips_the_bad_update_and_every_later_one(optimizer, clip):
    torch.manual_seed(0)
    model = _PixelNet()
    cfg = TrainingConfig(output_dir=Path("o"), optimizer=optimizer, learning_rate=0.1)
    step = TrainStep(model, SegmentationLoss(), build_optimizer(model.parameters(), cfg),
                     torch.amp.GradScaler("cpu", enabled=False), contextlib.nullcontext, grad_clip_norm=clip)
    x, y = torch.randn(2, 3, 4, 4), torch.randint(0, 4, (2, 4, 4))
    before = copy.deepcopy(model.state_dict())
    step(x, y, step=1, lr_factor=0.5)
    assert [g["lr"] for g in step.optimizer.param_groups] == [pytest.approx(0.05)]
    assert not torch.equal(model.conv.weight, before["conv.weight"])
    good = copy.deepcopy(model.state_dict())
    assert torch.isnan(step(x * float("nan"), y, step=2))
    assert math.isfinite(step(x, y, step=3).item())  # finite again, but the run is already condemned
    for key, value in model.state_dict().items():
        assert torch.equal(value, good[key]), key
    assert int(step.first_bad_step) == 2
    with pytest.raises(NonFiniteLossError, match="optimizer step 2 \\(epoch 1\\)"):
        step.raise_if_nonfinite(CPU, "epoch 1")


def test_train_metrics_windows_epoch_totals_and_checkpoint_keys():
    metrics = TrainMetrics(CPU, global_batch=8)
    for loss in metrics.timed([2.0, 4.0]):
        metrics.add(torch.tensor(loss, dtype=torch.float64))
    window = metrics.close_window()
    assert window.batches == 2 and window.loss == pytest.approx(3.0) and 0 <= window.data_wait_frac <= 1
    metrics.add(torch.tensor(6.0, dtype=torch.float64))
    metrics.close_window()
    state = metrics.state_dict()
    # the keys TrainState held before the metrics had a module of their own: old checkpoints stay loadable
    assert set(state) == {"epoch_batches", "epoch_elapsed_s", "epoch_loss_total", "epoch_wait_frac"}
    assert state["epoch_batches"] == 3 and state["epoch_loss_total"] == pytest.approx(12.0)
    resumed = TrainMetrics(CPU, global_batch=8)
    resumed.load_state_dict({"epoch": 1, "global_step": 9, **state})
    assert resumed.epoch == metrics.epoch
    totals = resumed.take_epoch()
    assert totals.train_loss(world_size=1) == pytest.approx(4.0) and resumed.epoch.epoch_batches == 0


def test_an_epochs_first_window_does_not_time_the_previous_epochs_validation(monkeypatch):
    import dist_seg.train.metrics as metrics_module

    clock = [0.0]
    monkeypatch.setattr(metrics_module.time, "perf_counter", lambda: clock[0])
    metrics = TrainMetrics(CPU, global_batch=4)
    clock[0] = 100.0  # validation, visualisation and the checkpoint of the previous epoch
    metrics.start_epoch()
    for loss in metrics.timed([1.0, 1.0]):
        clock[0] += 1.0
        metrics.add(torch.tensor(loss, dtype=torch.float64))
    window = metrics.close_window()
    assert window.images_per_s == pytest.approx(2 * 4 / 2.0)  # 2 batches of 4 images in 2 s, not in 102 s
    assert metrics.take_epoch().epoch_elapsed_s == pytest.approx(2.0)
    metrics.add(torch.tensor(1.0, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="open window"):
        metrics.start_epoch()


def test_checkpointer_round_trip_and_an_old_lambdalr_scheduler_entry(tmp_path):
    cfg = tiny_config(tmp_path / "data", tmp_path / "run")

    def parts(seed: int) -> Checkpointer:
        torch.manual_seed(seed)
        model = _PixelNet()
        optimizer = build_optimizer(model.parameters(), cfg.training)
        metrics = TrainMetrics(CPU, global_batch=4)
        return Checkpointer(cfg, CPU, RunOutputs(cfg, active=True), Palette.from_config(cfg.dataset),
                            EpochPlan(steps_per_epoch=6, grad_accum_steps=1, epochs=2), model=model,
                            optimizer=optimizer, scaler=torch.amp.GradScaler("cpu", enabled=False), metrics=metrics,
                            aug_generator=torch.Generator().manual_seed(seed))

    saved = parts(1)
    saved.metrics.epoch = EpochTotals(2, 1.5, 7.0, 0.25)
    position = TrainPosition(epoch=1, batch_in_epoch=2, global_step=8, best_miou=0.5, best_epoch=1)
    saved.save(position, mid_epoch=True)
    path = tmp_path / "run" / "checkpoints" / "epoch_0002_batch_000002.pth"  # "epoch 2, batch 2" in the log
    state = torch.load(path, weights_only=True)
    assert set(state) == {"format", "version", "model", "optimizer", "scheduler", "scaler", "train_state", "epoch",
                          "global_step", "best_metric", "rng", "config", "class_names", "palette", "world_size"}
    assert state["scheduler"] == {"step": 8}

    # A checkpoint of the LambdaLR era: its scheduler entry is LambdaLR's own state dict.
    lambda_lr = torch.optim.lr_scheduler.LambdaLR(torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], lr=1.0),
                                                  lambda s: 1.0)
    for _ in range(8):
        lambda_lr.optimizer.step()
        lambda_lr.step()
    old = tmp_path / "old.pth"
    torch.save({**state, "scheduler": lambda_lr.state_dict()}, old)
    restored = parts(2)
    assert restored.restore(old) == position
    assert restored.metrics.epoch == EpochTotals(2, 1.5, 7.0, 0.25)
    for key, value in saved.model.state_dict().items():
        assert torch.equal(restored.model.state_dict()[key], value)
    torch.save({**state, "scheduler": {"step": 7}}, old)
    with pytest.raises(CheckpointError, match="damaged"):
        parts(3).restore(old)


def test_cpu_threads_auto_leaves_the_loader_processes_and_other_ranks_cores_free():
    from dist_seg.runtime.threads import choose_cpu_threads
    from dist_seg.parallel import usable_cores

    cores = usable_cores()
    assert choose_cpu_threads("auto", loader_processes=1, env={}).threads == max(1, cores - 1)
    assert choose_cpu_threads("auto", loader_processes=0, local_processes=2, env={}).threads == max(1, cores // 2)
    assert choose_cpu_threads("auto", loader_processes=cores + 4, env={}).threads == 1
    assert choose_cpu_threads("auto", loader_processes=0, env={"OMP_NUM_THREADS": "3"}).threads == 3
    explicit = choose_cpu_threads(5, loader_processes=1, env={"OMP_NUM_THREADS": "3"})
    assert (explicit.threads, explicit.reason) == (5, "backend.cpu_threads")
