"""Pictures for people: colour masks, overlays, and side-by-side panels with a class legend."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from ..data.palette import Palette

OVERLAY_ALPHA = 0.5


def overlay(image: np.ndarray, ids: np.ndarray, palette: Palette, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """Blend the colour mask of ``ids`` over an ``[H, W, 3]`` uint8 image."""
    colors = palette.ids_to_rgb(ids).astype(np.float32)
    return (image.astype(np.float32) * (1 - alpha) + colors * alpha).round().astype(np.uint8)


def legend(palette: Palette, present: set[int], width: int) -> np.ndarray:
    """A strip of colour swatches with class names, for the classes in ``present``."""
    ids = sorted(i for i in present if i < palette.num_classes)
    cell_w, cell_h = 130, 18
    per_row = max(1, width // cell_w)
    rows = max(1, -(-len(ids) // per_row))
    canvas = Image.new("RGB", (width, rows * cell_h + 4), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for k, cid in enumerate(ids):
        x, y = (k % per_row) * cell_w + 4, (k // per_row) * cell_h + 3
        draw.rectangle([x, y, x + 14, y + 12], fill=tuple(int(c) for c in palette.colors[cid]), outline=(0, 0, 0))
        draw.text((x + 19, y), palette.names[cid], fill=(0, 0, 0))
    return np.asarray(canvas)


def comparison_panel(image: np.ndarray, target: np.ndarray, pred: np.ndarray, palette: Palette) -> np.ndarray:
    """Image | ground truth overlay | prediction overlay, above a legend of the classes shown."""
    gt = overlay(image, target, palette)
    pr = overlay(image, pred, palette)
    gap = np.full((image.shape[0], 4, 3), 255, dtype=np.uint8)
    top = np.concatenate([image, gap, gt, gap, pr], axis=1)
    present = set(np.unique(target).tolist()) | set(np.unique(pred).tolist())
    return np.concatenate([top, legend(palette, present, top.shape[1])], axis=0)

