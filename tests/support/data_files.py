"""Helpers shared by the data tests: tiny DAVID-layout datasets written as real PNG files.

Holds no tests itself (tests/unit/test_data_* import it).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from dist_seg.config import DAVID_CLASSES, Config, config_from_dict

REPO_ROOT = Path(__file__).resolve().parents[2]
COLORS = np.array([c.color for c in DAVID_CLASSES], dtype=np.uint8)
SIZE = (24, 32)  # (H, W) of the source frames


def class_ids(rng: np.random.Generator, size: tuple[int, int] = SIZE) -> np.ndarray:
    """A blocky class-id map (4x4 blocks) so resizing has structure to preserve."""
    h, w = size
    blocks = rng.integers(0, len(DAVID_CLASSES), size=(-(-h // 4), -(-w // 4)), dtype=np.uint8)
    return np.kron(blocks, np.ones((4, 4), dtype=np.uint8))[:h, :w]


def write_frame(root: Path, sequence: str, stem: str, rng: np.random.Generator, *, size: tuple[int, int] = SIZE,
                mask_format: str = "rgb", image_ext: str = ".png") -> tuple[Path, Path]:
    """Write one image and its mask; returns their paths."""
    image = root / "Images" / sequence / f"{stem}{image_ext}"
    mask = root / "Labels" / sequence / f"{stem}.png"
    image.parent.mkdir(parents=True, exist_ok=True)
    mask.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)).save(image)
    ids = class_ids(rng, size)
    Image.fromarray(COLORS[ids] if mask_format == "rgb" else ids).save(mask)
    return image, mask


def make_dataset(root: Path, sequences: dict[str, int], *, seed: int = 0, size: tuple[int, int] = SIZE,
                 mask_format: str = "rgb") -> Path:
    """``{sequence name: frame count}`` -> a dataset root with real PNG frames and masks."""
    rng = np.random.default_rng(seed)
    for name, count in sequences.items():
        for i in range(count):
            write_frame(root, name, f"{name.lower()}_{i:04d}", rng, size=size, mask_format=mask_format)
    return root


def make_config(tmp_path: Path, root: Path, *, dataset: dict | None = None, training: dict | None = None) -> Config:
    """A validated Config for ``root`` with a cache and output folder inside ``tmp_path``."""
    raw = {
        "dataset": {"root": str(root), "cache_dir": str(tmp_path / "cache"), "cache_size": [16, 20],
                    "cache_workers": 1, **(dataset or {})},
        "training": {"output_dir": str(tmp_path / "out"), "batch_size": 2, "val_batch_size": 2,
                     "num_workers": 0, **(training or {})},
    }
    return config_from_dict(raw)


def write_config_file(tmp_path: Path, root: Path, extra_dataset: str = "") -> Path:
    """A YAML config file (for the command-line tests)."""
    path = tmp_path / "config.yaml"
    path.write_text(f"dataset:\n  root: {root}\n  cache_dir: {tmp_path / 'cache'}\n  cache_size: [16, 20]\n"
                    f"{extra_dataset}training:\n  output_dir: {tmp_path / 'out'}\n  batch_size: 2\n")
    return path


def run_module(module: str, *args: str) -> subprocess.CompletedProcess:
    """``python -m module args`` with this checkout importable."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, env=env,
                          timeout=120)
