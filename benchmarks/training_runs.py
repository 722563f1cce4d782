"""Real ``dist_seg.train`` runs in a subprocess, and the throughput windows they log.

The trainer logs ``train/throughput_img_s`` (global images/s) and ``train/data_wait_frac``
to TensorBoard once per ``training.log_interval`` steps. A run of
``log_interval * (windows + 1)`` steps gives one warm-up window (process start, loader
start, first steps, compilation) that is dropped and ``windows`` timed ones.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .sizes import Sizes

# A real run on a slow machine takes minutes; one that takes longer than this is stuck.
RUN_TIMEOUT_S = 1800


@dataclass(frozen=True)
class Windows:
    """Per-window values a training run logged, warm-up window dropped."""

    images_per_s: list[float]  # global, all ranks together
    data_wait_frac: list[float]


def train(run_dir: Path, raw: dict[str, Any], sizes: Sizes, *, nproc: int | None = None,
          threads: int | None = None) -> Windows:
    """Train with ``raw`` config data in a fresh ``run_dir`` and return its timed windows.

    ``nproc`` launches that many ranks with torchrun (one node); None runs a plain
    process. ``threads`` sets OMP_NUM_THREADS for every rank.
    """
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    raw = {**raw, "training": {**raw["training"], "output_dir": str(run_dir / "out"),
                               "log_interval": sizes.run_log_interval,
                               "max_steps": sizes.run_log_interval * (sizes.run_windows + 1)}}
    config = run_dir / "config.yaml"
    config.write_text(yaml.safe_dump(raw, sort_keys=False))
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] \
        if nproc else [sys.executable]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    result = subprocess.run([*launcher, "-m", "dist_seg.train", str(config)], env=env, capture_output=True,
                            text=True, timeout=RUN_TIMEOUT_S, check=False)
    (run_dir / "train.log").write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        tail = (result.stdout + result.stderr)[-3000:]
        raise RuntimeError(f"training run in {run_dir} failed (exit {result.returncode}):\n{tail}")
    # A benchmark run is never resumed; its checkpoint (~200 MB even for the CPU model) only fills the disk.
    shutil.rmtree(run_dir / "out" / "checkpoints", ignore_errors=True)
    return read_windows(run_dir / "out" / "tensorboard")


def read_windows(log_dir: Path) -> Windows:
    """The logged throughput windows of a run, first (warm-up) window dropped."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    throughput = [e.value for e in acc.Scalars("train/throughput_img_s")]
    wait = [e.value for e in acc.Scalars("train/data_wait_frac")]
    if len(throughput) < 2:
        raise RuntimeError(f"{log_dir} holds {len(throughput)} throughput window(s); need a warm-up one and more")
    return Windows(throughput[1:], wait[1:])
