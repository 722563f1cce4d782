"""Elastic resume: an epoch interrupted on 1 rank continues on 2 (and 2 -> 1) with exactly its unseen samples.

Real torchrun (gloo, loopback) for the 2-rank segments, in-process runs for the 1-rank ones.
Every rank records the frames of each micro-batch it trained (``telemetry.sample_log``); the
union over the interrupted and the resumed segment must be the epoch, each frame once.
22 training frames with batch 2 per rank: 3 steps on 1 rank are 6 samples, which no global
batch of 2 ranks x 2 divides (the old carry-over rounded it down and trained 2 frames twice).
Augmentation is on, so the random streams that continue on another world size matter too.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from support.helpers import tiny_raw_config
from support.torchrun import torchrun_train

from dist_seg.checkpoint_file import list_checkpoints
from dist_seg.config import apply_overrides, config_from_dict
from dist_seg.synth import generate_dataset
from dist_seg.train.run import run_training

pytestmark = [pytest.mark.slow, pytest.mark.distributed]

FRAMES = 22  # 2 sequences x 11, all training


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("elastic")
    generate_dataset(work / "data", sequences=2, frames=11, size=(32, 48), seed=3)
    return work


def write_config(work: Path, name: str, **overrides: Any) -> Path:
    raw = tiny_raw_config(work / "data", work / name, work / "cache")
    apply_overrides(raw, {
        "dataset.split": {"val": [], "test": []}, "model": {"type": "fixtures_custom_model:LinearPixelNet"},
        "training.epochs": 1, "training.batch_size": 2, "training.image_size": [32, 48],
        "training.class_weighting": "none", "telemetry.tensorboard": False, "telemetry.sample_log": True,
        **overrides}.items())
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def train_here(config: Path, **overrides: Any) -> None:
    raw = yaml.safe_load(config.read_text())
    apply_overrides(raw, overrides.items())
    run_training(config_from_dict(raw))


def trained(out: Path) -> list[str]:
    """Every frame path that any rank's micro-batches held, over all segments of the run."""
    return [path for log in sorted((out / "samples").glob("rank*.jsonl"))
            for line in log.read_text().splitlines() for path in json.loads(line)["paths"]]


def every_frame(work: Path) -> list[str]:
    return sorted(str(p) for p in (work / "data" / "Images").glob("*/*.png"))


def test_one_rank_to_two_continues_with_exactly_the_unseen_samples(work):
    config = write_config(work, "grow", **{"training.max_steps": 3})
    train_here(config)
    out = work / "grow"
    assert list_checkpoints(out / "checkpoints")[-1].path.name == "epoch_0001_batch_000003.pth"
    assert len(trained(out)) == 6

    rank0 = torchrun_train(config, 2, work / "grow_logs", "training.resume_from_checkpoint=auto",
                           "training.max_steps=null")
    assert "carried over as a count of samples (6 into epoch 1)" in rank0
    # 16 samples are left: 4 steps of 2 ranks x 2, counted as the last 4 of this run's 5 steps.
    assert "continuing at epoch 1, batch 1 (global step 1)" in rank0
    assert "random streams continue from seeds of the position and the rank" in rank0
    records = [json.loads(line) for line in (out / "samples" / "rank1.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 3, 4, 5]
    paths = trained(out)
    assert sorted(paths) == every_frame(work) and len(paths) == FRAMES
    history = json.loads((out / "history.json").read_text())
    assert [(r["epoch"], r["global_step"], r["world_size"]) for r in history] == [(1, 5, 2)]


def test_two_ranks_to_one_continues_with_exactly_the_unseen_samples_and_the_same_augmentation(work):
    config = write_config(work, "shrink", **{"training.max_steps": 3})
    rank0 = torchrun_train(config, 2, work / "shrink_logs")
    out = work / "shrink"
    assert "done (max_steps)" in rank0
    assert len(trained(out)) == 12
    # The same resume twice: the random streams continue from the position, not from the saved ranks'.
    again = work / "shrink_again"
    shutil.copytree(out, again)

    train_here(config, **{"training.resume_from_checkpoint": "auto", "training.max_steps": None})
    paths = trained(out)
    assert sorted(paths) == every_frame(work) and len(paths) == FRAMES
    records = [json.loads(line) for line in (out / "samples" / "rank0.jsonl").read_text().splitlines()]
    # 12 samples are 6 steps of this run's 1 rank x 2; the other 10 are its last 5 steps.
    assert [r["step"] for r in records][-5:] == [7, 8, 9, 10, 11]

    train_here(config, **{"training.resume_from_checkpoint": "auto", "training.max_steps": None,
                          "training.output_dir": str(again)})
    final = [torch.load(list_checkpoints(d / "checkpoints")[-1].path, weights_only=True)["model"]
             for d in (out, again)]
    for key, value in final[0].items():
        torch.testing.assert_close(value, final[1][key], rtol=0, atol=0)
    assert trained(again) == paths
