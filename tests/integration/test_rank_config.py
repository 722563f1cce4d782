"""Ranks started with different configs stop together at start, naming the key that differs (real torchrun)."""

from __future__ import annotations

import subprocess

import pytest
import yaml
from support.helpers import PYTHON, REPO_ROOT, SUPPORT_DIR, tiny_raw_config
from support.torchrun import launch_env

pytestmark = [pytest.mark.slow, pytest.mark.distributed]


def test_a_per_rank_override_stops_every_rank_before_the_data_is_prepared(synth_root, tmp_path):
    raw = tiny_raw_config(synth_root, tmp_path / "run", cache_dir=tmp_path / "cache")
    raw["model"] = {"type": "fixtures_custom_model:TinyNet"}
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(raw))
    env = launch_env()
    proc = subprocess.run([PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(SUPPORT_DIR / "rank_lr_train.py"), str(config)],
                          capture_output=True, text=True, cwd=REPO_ROOT, env=env, timeout=300)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    expected = ("error: the 2 ranks were started with different configs: training.learning_rate "
                "(rank 0: 0.001, rank 1: 0.002)")
    # Rank 0 prints it once (rank 1 stops quietly); torchrun's summary may quote it again.
    assert [line.startswith(expected) for line in output.splitlines()].count(True) == 1, output[-3000:]
    assert not (tmp_path / "cache").exists() and not (tmp_path / "run" / "splits.json").exists()
