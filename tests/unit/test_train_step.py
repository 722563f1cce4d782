"""The train step (a non-finite loss skips every later update), its metrics windows and totals, the
Checkpointer that saves and restores the training state, and the thread count beside loader processes."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
from pathlib import Path

import pytest
import torch
from support.helpers import tiny_config

from dist_seg.config import TrainingConfig
from dist_seg.data.palette import Palette
from dist_seg.errors import CheckpointError
from dist_seg.runtime.distributed import DistContext
from dist_seg.train.checkpointer import Checkpointer, EpochPlan, TrainPosition
from dist_seg.train.losses import SegmentationLoss
from dist_seg.train.metrics import EpochTotals, TrainMetrics
from dist_seg.train.outputs import RunOutputs
from dist_seg.train.step import NonFiniteLossError, TrainStep, build_optimizer

CPU = DistContext(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"), backend=None)


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
                            EpochPlan(steps_per_epoch=6, grad_accum_steps=1, epochs=2, frames=24), model=model,
                            optimizer=optimizer, scaler=torch.amp.GradScaler("cpu", enabled=False), metrics=metrics,
                            aug_generator=torch.Generator().manual_seed(seed))

    saved = parts(1)
    saved.metrics.epoch = EpochTotals(2, 1.5, 7.0, 0.25)
    position = TrainPosition(epoch=1, batch_in_epoch=2, samples_in_epoch=8, global_step=8, best_miou=0.5,
                             best_epoch=1)
    saved.save(position, mid_epoch=True)
    path = tmp_path / "run" / "checkpoints" / "epoch_0002_batch_000002.pth"  # "epoch 2, batch 2" in the log
    state = torch.load(path, weights_only=True)
    # Version 2: the position in one place (no train_state / scheduler copies), one entry per stateful part.
    assert set(state) == {"format", "version", "model", "optimizer", "scaler", "metrics", "position", "epoch",
                          "global_step", "best_metric", "rng", "config", "class_names", "palette", "world_size"}
    assert (state["version"], state["epoch"], state["global_step"], state["best_metric"]) == (2, 1, 8, 0.5)
    assert state["position"] == {"batch_in_epoch": 2, "samples_in_epoch": 8, "best_epoch": 1}
    restored = parts(2)
    assert restored.restore(path) == position
    assert restored.metrics.epoch == EpochTotals(2, 1.5, 7.0, 0.25)
    for key, value in saved.model.state_dict().items():
        assert torch.equal(restored.model.state_dict()[key], value)

    # The same checkpoint in version 1's layout (train_state and scheduler repeating the position,
    # the scheduler as LambdaLR's own state dict in its era) restores to the same place.
    lambda_lr = torch.optim.lr_scheduler.LambdaLR(torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], lr=1.0),
                                                  lambda s: 1.0)
    for _ in range(8):
        lambda_lr.optimizer.step()
        lambda_lr.step()
    v1 = {k: v for k, v in state.items() if k not in ("metrics", "position")}
    v1.update(version=1, scheduler=lambda_lr.state_dict(),
              train_state={**dataclasses.asdict(position), **state["metrics"]})
    old = tmp_path / "old.pth"
    torch.save(v1, old)
    assert parts(3).restore(old) == position
    torch.save({**v1, "scheduler": {"step": 7}}, old)
    with pytest.raises(CheckpointError, match="damaged"):
        parts(4).restore(old)


def test_cpu_threads_auto_leaves_the_loader_processes_and_other_ranks_cores_free():
    from dist_seg.parallel import usable_cores
    from dist_seg.runtime.threads import choose_cpu_threads

    cores = usable_cores()
    # An idle host (load 0): tests/unit/test_cpu_threads_load.py covers a busy one.
    assert choose_cpu_threads("auto", loader_processes=1, env={}, load=0.0).threads == max(1, cores - 1)
    assert choose_cpu_threads("auto", loader_processes=0, local_processes=2, env={},
                              load=0.0).threads == max(1, cores // 2)
    assert choose_cpu_threads("auto", loader_processes=cores + 4, env={}, load=0.0).threads == 1
    assert choose_cpu_threads("auto", loader_processes=0, env={"OMP_NUM_THREADS": "3"}).threads == 3
    explicit = choose_cpu_threads(5, loader_processes=1, env={"OMP_NUM_THREADS": "3"})
    assert (explicit.threads, explicit.reason) == (5, "backend.cpu_threads")
