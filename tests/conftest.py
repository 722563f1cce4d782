"""Shared fixtures: a small synthetic DAVID-style dataset and configs for tiny, fast runs."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest

from dist_seg.config import Config, apply_overrides, config_from_dict
from dist_seg.data.synth import generate_dataset

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 sequences x 8 frames of 48x64: Video_000..002 train, Video_003 val in :func:`tiny_config`."""
    root = tmp_path_factory.mktemp("synth")
    generate_dataset(root, sequences=4, frames=8, size=(48, 64), seed=7)
    return root


def tiny_raw_config(data_root: Path, out_dir: Path, cache_dir: Path | None = None) -> dict[str, Any]:
    """Plain config data for a run that takes seconds on a CPU."""
    return {
        "dataset": {
            "root": str(data_root),
            "cache_dir": str(cache_dir or out_dir.parent / f"{out_dir.name}_cache"),
            "split": {"val": ["Video_003"], "test": []},
        },
        "model": {"type": "deeplabv3plus", "backbone": "resnet18", "output_stride": 16},
        "backend": {"target": "cpu"},
        "training": {
            "output_dir": str(out_dir), "batch_size": 4, "val_batch_size": 4, "epochs": 2,
            "learning_rate": 0.002, "num_workers": 0, "image_size": [48, 64], "log_interval": 2,
            "visualization_interval": 1, "num_visualizations": 2,
        },
        "telemetry": {"progress": "log", "vram_interval_s": 0.2},
    }


def tiny_config(data_root: Path, out_dir: Path, **overrides: Any) -> Config:
    """A validated tiny config; ``overrides`` use dotted keys with '__' for '.' (training__epochs=3)."""
    raw = tiny_raw_config(data_root, out_dir)
    apply_overrides(raw, [(k.replace("__", "."), v) for k, v in overrides.items()])
    return config_from_dict(raw)


def subprocess_env() -> dict[str, str]:
    """Environment for child Python processes: the repo importable, one thread per process."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), str(TESTS_DIR), env.get("PYTHONPATH", "")])
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONUNBUFFERED"] = "1"
    return env


PYTHON = sys.executable
