"""Ctrl-C: the first press saves a checkpoint at the next step and exits 130, a second press stops at once,
a doubled delivery does not count twice, and decode pool workers leave the signal to their parent.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest
import yaml
from support.helpers import PYTHON, REPO_ROOT, subprocess_env, tiny_raw_config

from dist_seg.checkpoint_file import list_checkpoints
from dist_seg.parallel import map_in_pool
from dist_seg.train.preemption import PreemptionWatch

pytestmark = pytest.mark.slow


def _train(config: Path) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, "-m", "dist_seg.train", str(config)], capture_output=True, text=True,
                          cwd=REPO_ROOT, env=subprocess_env(), timeout=300)


def test_ctrl_c_during_training_saves_a_checkpoint_and_exits_130(synth_root, tmp_path):
    """The first Ctrl-C stops at the next step with a checkpoint (not an epoch lost); the exit status says interrupted."""
    out = tmp_path / "run"
    raw = tiny_raw_config(synth_root, out)
    raw["model"] = {"type": "fixtures_custom_model:SignalAt", "call": 3, "signal_name": "SIGINT"}
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(raw))
    proc = _train(config)
    assert proc.returncode == 130, proc.stderr
    assert "Ctrl-C: saving a checkpoint before stopping" in proc.stdout
    assert "stopped on SIGINT at epoch 1, batch 3: resume with training.resume_from_checkpoint: auto" in proc.stdout
    assert "Traceback" not in proc.stderr
    assert [c.path.name for c in list_checkpoints(out / "checkpoints")] == ["epoch_0001_batch_000003.pth"]

    raw["model"]["call"] = 10**6
    raw["training"]["resume_from_checkpoint"] = "auto"
    config.write_text(yaml.safe_dump(raw))
    resumed = _train(config)
    assert resumed.returncode == 0, resumed.stderr
    assert re.search(r"resumed from \S*epoch_0001_batch_000003.pth", resumed.stdout)
    assert [c.path.name for c in list_checkpoints(out / "checkpoints")] == ["epoch_0001.pth", "epoch_0002.pth"]


def test_second_ctrl_c_stops_at_once_but_a_doubled_delivery_does_not():
    """Under torchrun one press reaches a rank twice within moments; only a later press is 'stop now'."""
    with PreemptionWatch() as watch:
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)  # the agent's forwarded copy of the same press
        assert watch.requested and watch.interrupted and watch.received == "SIGINT"
        watch._interrupted_at -= 5  # the user presses again seconds later
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def _sigint_handler(_item: int) -> str:
    return str(signal.getsignal(signal.SIGINT))


def test_decode_pool_workers_leave_ctrl_c_to_the_parent():
    """A terminal's Ctrl-C reaches every pool worker: they ignore it (no traceback each); the parent stops the pool."""
    if multiprocessing.get_start_method() != "fork":
        pytest.skip("the pool inherits handlers only with fork")
    handlers = set(map_in_pool(_sigint_handler, list(range(8)), workers=2, desc="probe", progress=False))
    assert handlers == {str(signal.SIG_IGN)}
