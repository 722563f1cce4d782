"""Paths, configs and environments shared by the tests (imported as ``support.helpers``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from dist_seg.checkpoint_file import save_checkpoint
from dist_seg.config import Config, apply_overrides, config_from_dict, config_to_dict

SUPPORT_DIR = Path(__file__).resolve().parent
TESTS_DIR = SUPPORT_DIR.parent
REPO_ROOT = TESTS_DIR.parent
PYTHON = sys.executable


def tiny_raw_config(data_root: Path, out_dir: Path, cache_dir: Path | None = None) -> dict[str, Any]:
    """Plain config data for a run that takes seconds on a CPU."""
    return {
        "dataset": {
            "root": str(data_root),
            "cache_dir": str(cache_dir or out_dir.parent / f"{out_dir.name}_cache"),
            "split": {"val": ["Video_003"], "test": []},
        },
        "model": {"type": "deeplabv3plus", "backbone": "resnet18", "output_stride": 16},
        # One torch thread, not `auto`: auto looks at the load, and the suite runs two test processes at
        # once, so a run's thread count (and its float rounding) would depend on what the other one did.
        "backend": {"target": "cpu", "cpu_threads": 1},
        "training": {
            "output_dir": str(out_dir), "batch_size": 4, "val_batch_size": 4, "epochs": 2,
            # No warm-up: tests of schedules and resumes expect the LR to be the configured one from step 1.
            "learning_rate": 0.002, "warmup_iters": 0, "num_workers": 0, "image_size": [48, 64], "log_interval": 2,
            "visualization_interval": 1, "num_visualizations": 2,
        },
        "telemetry": {"progress": "log", "vram_interval_s": 0.2},
    }


def tiny_config(data_root: Path, out_dir: Path, **overrides: Any) -> Config:
    """A validated tiny config; ``overrides`` use dotted keys with '__' for '.' (training__epochs=3)."""
    raw = tiny_raw_config(data_root, out_dir)
    apply_overrides(raw, [(k.replace("__", "."), v) for k, v in overrides.items()])
    return config_from_dict(raw)


TINY_NET = {"type": "fixtures_custom_model:TinyNet"}


def tiny_run(data_root: Path, out_dir: Path, **overrides: Any) -> Config:
    """:func:`tiny_config` with the two-conv TinyNet (seconds per run) unless ``model`` is given."""
    overrides.setdefault("model", TINY_NET)
    return tiny_config(data_root, out_dir, **overrides)


def save_model_checkpoint(model: Any, cfg: Config, directory: Path, *, global_step: int = 1,
                          config: dict[str, Any] | None = None) -> Path:
    """``model``'s weights as ``directory/epoch_0001.pth`` with ``cfg`` embedded (or ``config``, an edited copy):
    what the predict / evaluate / export tests load, without a training run."""
    return save_checkpoint({"model": model.state_dict(), "epoch": 1, "global_step": global_step,
                            "config": config_to_dict(cfg) if config is None else config},
                           directory, "epoch_0001.pth", keep=1)


def nothing_prepared(cfg: Config) -> bool:
    """True while a run has built no cache: its checks came before the data work."""
    return not Path(cfg.dataset.cache_dir).exists()


def write_config(path: Path, raw: dict[str, Any]) -> Path:
    """``raw`` written to ``path`` as a YAML config file."""
    path.write_text(yaml.safe_dump(raw))
    return path


def run_module(module: str, *args: str, env: dict[str, str] | None = None,
               timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m module args`` in a child process from the repository root; output captured as text."""
    return subprocess.run([PYTHON, "-m", module, *args], capture_output=True, text=True, cwd=REPO_ROOT,
                          env=env or subprocess_env(), timeout=timeout)


def subprocess_env() -> dict[str, str]:
    """Environment for child Python processes: the repo importable, one thread per process."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), str(TESTS_DIR), str(SUPPORT_DIR),
                                         env.get("PYTHONPATH", "")])
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONUNBUFFERED"] = "1"
    return env
