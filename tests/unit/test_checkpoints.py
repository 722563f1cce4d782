"""Checkpoint files: names, rotation, the best-model mirror, weights-only loading, clear errors."""

from __future__ import annotations

import errno
from pathlib import Path

import numpy as np
import pytest
import torch

from dist_seg import checkpoint_file as ckpt
from dist_seg.errors import CheckpointError


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
