"""Checkpoint format versions: a file written by an earlier dist_seg (format 1) still resumes exactly.

``tests/support/data/checkpoint_v1_tinynet_epoch1_batch4.pth`` was written by dist_seg at commit
579701c (format 1): ``fixtures_custom_model:TinyNet`` with EMA on, 32x32 inputs, batch 2, data from
``python -m dist_seg.synth DIR --sequences 4 --frames 6 --size 48x64 --seed 3``, stopped by
``training.max_steps: 4`` inside epoch 1 of 3.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import yaml
from support.helpers import SUPPORT_DIR, subprocess_env, tiny_raw_config

from dist_seg.checkpoint_file import load_checkpoint
from dist_seg.errors import CheckpointError

V1 = SUPPORT_DIR / "data" / "checkpoint_v1_tinynet_epoch1_batch4.pth"

pytestmark = pytest.mark.slow


def test_a_version_1_file_reads_as_version_2_with_the_position_in_one_place():
    state = load_checkpoint(V1)
    assert state["version"] == 2 and "train_state" not in state and "scheduler" not in state
    assert (state["epoch"], state["global_step"]) == (0, 4)
    assert state["position"] == {"batch_in_epoch": 4, "best_epoch": 1}
    assert state["ema"]["updates"] == 4 and state["ema"]["module"].keys() == state["model"].keys()
    assert state["metrics"]["epoch_batches"] == 4


def test_a_version_1_file_whose_copies_of_the_step_disagree_is_refused(tmp_path):
    raw = torch.load(V1, weights_only=True)
    raw["scheduler"] = {"step": 3}
    damaged = tmp_path / "damaged.pth"
    torch.save(raw, damaged)
    with pytest.raises(CheckpointError, match="damaged"):
        load_checkpoint(damaged)


def test_training_resumes_from_a_version_1_checkpoint_and_writes_version_2(tmp_path):
    data = tmp_path / "data"
    subprocess.run([sys.executable, "-m", "dist_seg.synth", str(data), "--sequences", "4", "--frames", "6",
                    "--size", "48x64", "--seed", "3"], check=True, env=subprocess_env(), capture_output=True)
    out = tmp_path / "out"
    raw = tiny_raw_config(data, out)
    raw["model"] = {"type": "fixtures_custom_model:TinyNet"}
    raw["training"].update(epochs=2, batch_size=2, image_size=[32, 32], precise_bn_batches=0, ema={"enabled": True},
                           final_eval=False, resume_from_checkpoint=str(V1))
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(raw))
    done = subprocess.run([sys.executable, "-m", "dist_seg.train", str(config)], env=subprocess_env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "continuing at epoch 1, batch 4 (global step 4)" in done.stdout
    final = torch.load(out / "checkpoints" / "epoch_0002.pth", weights_only=True)
    steps_per_epoch = json.loads((out / "history.json").read_text())[0]["global_step"]
    assert final["version"] == 2 and final["global_step"] == 2 * steps_per_epoch
    # The EMA went on counting from the old file's 4 updates: one per optimizer step.
    assert final["ema"]["updates"] == final["global_step"]
