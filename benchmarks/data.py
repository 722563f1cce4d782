"""The scratch dataset (synthetic DAVID-style, 800x600) and the configs the suites run with.

The dataset is generated once per size into the scratch folder and reused by later runs:
it is written under a temporary name and renamed when complete, so an interrupted
generation is never mistaken for a finished one.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dist_seg.synth import generate_dataset

from .sizes import FRAME_SIZE, Sizes


def ensure_dataset(scratch: Path, sizes: Sizes, log: Callable[[str], None]) -> Path:
    """The root of the scratch dataset for ``sizes``, generated if it does not exist yet."""
    height, width = FRAME_SIZE
    root = scratch / f"synth-{sizes.sequences}x{sizes.frames}-{height}x{width}"
    if root.is_dir():
        return root
    log(f"generating {sizes.sequences} sequences x {sizes.frames} frames of {width}x{height} into {root}")
    tmp = root.with_name(f"{root.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    generate_dataset(tmp, sequences=sizes.sequences, frames=sizes.frames, size=FRAME_SIZE, seed=0)
    os.replace(tmp, root)
    return root


def sequence_names(sizes: Sizes) -> list[str]:
    """Sequence folder names of the scratch dataset, as the generator writes them."""
    return [f"Video_{s:03d}" for s in range(sizes.sequences)]


def raw_config(data_root: Path, output_dir: Path, cache_dir: Path, *, image_size: tuple[int, int],
               batch_size: int, num_workers: int, backbone: str = "resnet18", use_cache: bool = True,
               cache_images: bool = True, include: list[str] | None = None, target: str = "auto") -> dict[str, Any]:
    """Plain config data (for ``config_from_dict`` or a YAML file): every sequence trains, none validates.

    ``epochs`` is large so that ``training.max_steps`` alone decides where a run stops.
    """
    return {
        "dataset": {"root": str(data_root), "cache_dir": str(cache_dir), "use_cache": use_cache,
                    "cache_images": cache_images, "include": include, "split": {"val": [], "test": []}},
        "model": {"type": "deeplabv3plus", "backbone": backbone},
        "backend": {"target": target},
        "training": {"output_dir": str(output_dir), "batch_size": batch_size, "num_workers": num_workers,
                     "image_size": list(image_size), "epochs": 1000},
        "telemetry": {"progress": "none"},
    }
