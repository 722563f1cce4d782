"""Checkpoints every N steps inside an epoch: exact resume from one, and TensorBoard without repeated steps.

A kill -9 loses the work since the last checkpoint; ``training.checkpoint_interval_steps``
bounds that. The kill is a ``max_steps`` stop one step after the interval checkpoint: what the
killed run wrote after that checkpoint is trained again by the resumed run.
"""

from __future__ import annotations

import json

import pytest
import torch
from support.helpers import tiny_config
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from dist_seg.checkpoint_file import list_checkpoints
from dist_seg.errors import ConfigError
from dist_seg.train.run import run_training

TINY = {"type": "fixtures_custom_model:TinyNet", "width": 4}


def _weights(out):
    return torch.load(out / "checkpoints" / "epoch_0001.pth", weights_only=True)["model"]


def test_resume_from_an_interval_checkpoint_is_exact_and_purges_the_killed_runs_points(synth_root, tmp_path,
                                                                                        capsys):
    # 24 training frames, batch 4: 6 steps per epoch; log every 2 steps.
    straight = tmp_path / "straight"
    run_training(tiny_config(synth_root, straight, model=TINY, training__epochs=1))
    killed = tmp_path / "killed"
    run_training(tiny_config(synth_root, killed, model=TINY, training__epochs=1, training__max_steps=5,
                             training__checkpoint_interval_steps=3))
    assert f"checkpoint: {killed / 'checkpoints' / 'epoch_0001_batch_000003.pth'}" in capsys.readouterr().out
    assert [(c.epoch, c.step) for c in list_checkpoints(killed / "checkpoints")] == [(0, 3), (0, 5)]
    (killed / "checkpoints" / "epoch_0001_batch_000005.pth").unlink()  # as if killed before the stop's save

    run_training(tiny_config(synth_root, killed, model=TINY, training__epochs=1,
                             training__checkpoint_interval_steps=3, training__resume_from_checkpoint="auto"))
    log = capsys.readouterr().out
    assert "continuing at epoch 1, batch 3 (global step 3)" in log
    # Progress counts the epoch's batches from the resumed position; img/s is this process's.
    assert "epoch 1/1 batch 6/6 (step 6)" in log
    assert "img/s (this process only: batches 4-6 of the epoch; it resumed mid-epoch)" in log
    a, b = _weights(straight), _weights(killed)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # The epoch end overtook the interval checkpoint, which is removed like a preemption's.
    assert [(c.epoch, c.step) for c in list_checkpoints(killed / "checkpoints")] == [(1, None)]
    history = json.loads((killed / "history.json").read_text())
    assert [r["epoch"] for r in history] == [1]

    events = EventAccumulator(str(killed / "tensorboard"))
    events.Reload()
    # The killed run logged train/loss at steps 2, 3 (its interval checkpoint closes the log window), 4 and 5
    # (its stop); the resumed run trained steps 4-6 again and logs at 4 and 6: each step once.
    assert [e.step for e in events.Scalars("train/loss")] == [2, 3, 4, 6]
    assert [e.step for e in events.Scalars("val/loss")] == [6]


def test_checkpoint_interval_values_are_checked(synth_root, tmp_path):
    with pytest.raises(ConfigError, match="training.checkpoint_interval_steps: must be >= 1 or null"):
        tiny_config(synth_root, tmp_path / "run", training__checkpoint_interval_steps=0)
    with pytest.raises(ConfigError, match="training.checkpoint_interval_minutes: must be positive"):
        tiny_config(synth_root, tmp_path / "run", training__checkpoint_interval_minutes=-5)
