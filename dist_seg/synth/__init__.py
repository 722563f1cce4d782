"""Synthetic DAVID-style driving sequences drawn with numpy.

Each sequence is a street seen from a car driving forward: a perspective road with lane
lines, sidewalks, building / wall / fence / hedge façades with a second row of buildings
and trees behind them, poles carrying traffic signs, cars, pedestrians and "other" street
furniture. The scene lives in world coordinates (metres; the camera at lateral 0, its
forward position ``z`` growing by ``speed`` each frame), so consecutive frames show the same
world from a little further on: objects grow and move outward and down, lane dashes scroll.

Labels use the exact palette colours (or class ids). Images are derived from the same
drawing but with their own per-class base colours, world-anchored textures (windows,
bricks, tiles, foliage), per-instance colours (car paint, clothes), lighting that varies
per sequence and over time, and sensor noise, so a network has to learn the classes
rather than read them off the pixel colour.

Everything is vectorised over pixels; the only Python loops run over a few dozen objects.
A sequence's world depends on ``(seed, sequence)`` only, never on the image size, and is
drawn from prefix-stable random streams: a longer sequence starts with the frames of a
shorter one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from ..atomic import write_bytes
from ..config.classes import DAVID_CLASSES, ClassSpec
from ..data.discovery import IMAGE_SUFFIXES
from .png import encode_image, encode_png
from .render import render_frame
from .scene import ROLES, make_scene

__all__ = ["MIN_SIZE", "SynthSummary", "generate_dataset"]

MIN_SIZE = 16


@dataclass(frozen=True)
class SynthSummary:
    """What :func:`generate_dataset` wrote."""

    root: Path
    sequences: int
    frames: int  # per sequence
    size: tuple[int, int]  # (H, W)
    mask_format: str
    class_pixel_counts: dict[str, int]

    @property
    def total_frames(self) -> int:
        return self.sequences * self.frames

    def describe(self) -> str:
        """One paragraph for humans: what was written where, and the class balance."""
        total = max(1, sum(self.class_pixel_counts.values()))
        shares = sorted(self.class_pixel_counts.items(), key=lambda kv: -kv[1])
        balance = ", ".join(f"{name} {100.0 * n / total:.1f}%" for name, n in shares)
        h, w = self.size
        return (
            f"Wrote {self.sequences} sequence(s) x {self.frames} frame(s) = {self.total_frames} frames of "
            f"{h}x{w} (HxW) to {self.root} (Images/Video_XXX/vXXX_YYYY, Labels/... as {self.mask_format} masks). "
            f"Class pixel shares: {balance}."
        )



# ----------------------------------------------------------------------------- dataset


def _role_to_class(classes: Sequence[ClassSpec]) -> np.ndarray:
    """Class id of every drawing role in ``classes``, matched by name."""
    names = [c.name for c in classes]
    missing = [r for r in ROLES if r not in names]
    if missing:
        raise ValueError(
            f"the synthetic generator draws DAVID's classes and needs a class named each of {', '.join(ROLES)}; "
            f"missing: {', '.join(missing)}. Rename your classes to DAVID's names (any order and colours) "
            "or generate with the default DAVID class list."
        )
    if len(classes) > 255:
        raise ValueError(f"at most 255 classes fit in uint8 masks, got {len(classes)}")
    return np.array([names.index(r) for r in ROLES], dtype=np.uint8)


def _check_args(sequences: int, frames: int, size: tuple[int, int], seed: int, mask_format: str,
                classes: Sequence[ClassSpec], image_ext: str) -> None:
    if sequences < 1 or frames < 1:
        raise ValueError(f"need at least one sequence and one frame, got sequences={sequences}, frames={frames}")
    if len(size) != 2 or min(size) < MIN_SIZE:
        raise ValueError(f"size must be (H, W) with both at least {MIN_SIZE} pixels, got {size}")
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    if mask_format not in ("rgb", "index"):
        raise ValueError(f"mask_format must be 'rgb' or 'index', got {mask_format!r}")
    if image_ext.lower() not in IMAGE_SUFFIXES:
        raise ValueError(f"image_ext must be one of {', '.join(IMAGE_SUFFIXES)}, got {image_ext!r}")
    colors = [c.color for c in classes]
    if mask_format == "rgb" and len(set(colors)) != len(colors):
        raise ValueError("two classes share a colour; RGB masks need one colour per class (or use mask_format='index')")


def generate_dataset(out_dir: Path, sequences: int = 3, frames: int = 8, size: tuple[int, int] = (120, 160),
                     seed: int = 0, mask_format: Literal["rgb", "index"] = "rgb",
                     classes: Sequence[ClassSpec] = DAVID_CLASSES, image_ext: str = ".png") -> SynthSummary:
    """Write a DAVID-layout dataset of synthetic street sequences and return what was written.

    Layout: ``out_dir/Images/Video_SSS/vSSS_FFFF{image_ext}`` and ``out_dir/Labels/Video_SSS/vSSS_FFFF.png``.
    Labels are RGB PNGs in the exact colours of ``classes`` (``mask_format="rgb"``) or
    single-channel PNGs of class ids (``"index"``). ``classes`` must name every DAVID class
    (any order, any colours; extra classes are allowed and simply never drawn). Output is
    byte-identical for the same arguments on the same numpy/zlib/libjpeg. Each file is
    written atomically. Files of an earlier run with more sequences or frames are left alone.
    """
    _check_args(sequences, frames, size, seed, mask_format, classes, image_ext)
    size = (int(size[0]), int(size[1]))
    ext = image_ext.lower()
    out_dir = Path(out_dir)
    class_of_role = _role_to_class(classes)
    colors = np.array([c.color for c in classes], dtype=np.uint8).reshape(-1, 3)
    counts = np.zeros(len(classes), dtype=np.int64)
    for s in range(sequences):
        scene = make_scene(seed, s, frames)
        seq = f"Video_{s:03d}"
        for f in range(frames):
            image, roles = render_frame(scene, seed, s, f, size)
            ids = class_of_role[roles]
            counts += np.bincount(ids.ravel(), minlength=len(classes))
            stem = f"v{s:03d}_{f:04d}"
            label = colors[ids] if mask_format == "rgb" else ids
            write_bytes(out_dir / "Images" / seq / f"{stem}{ext}", encode_image(image, ext))
            write_bytes(out_dir / "Labels" / seq / f"{stem}.png", encode_png(label, noisy=False))
    return SynthSummary(out_dir, sequences, frames, size, mask_format,
                        {c.name: int(n) for c, n in zip(classes, counts, strict=False)})
