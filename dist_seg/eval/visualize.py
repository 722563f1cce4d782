"""Pictures for people: colour masks, overlays with a class legend, titled side-by-side panels.

Text uses Pillow's built-in default font, so no font file has to be installed.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..config import IGNORE_INDEX
from ..data.palette import Palette
from .metrics import metrics_from_confusion

OVERLAY_ALPHA = 0.5
# Panels narrower than this are enlarged (nearest neighbour, whole factors) so that their
# titles fit and small cache-resolution frames stay readable.
MIN_PANEL_WIDTH = 192
_WHITE = (255, 255, 255)
_BLACK = (0, 0, 0)
_PAD = 4
_SWATCH = (16, 12)  # width, height
_GAP = 4


@lru_cache(maxsize=1)
def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default()


def _line_height() -> int:
    left, top, right, bottom = _font().getbbox("Ag")
    return int(bottom) + 2


def _text_width(text: str) -> int:
    return int(math.ceil(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(text, font=_font())))


def overlay(image: np.ndarray, ids: np.ndarray, palette: Palette, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """Blend the colour mask of ``ids`` over an ``[H, W, 3]`` uint8 image."""
    colors = palette.ids_to_rgb(ids).astype(np.float32)
    return (image.astype(np.float32) * (1 - alpha) + colors * alpha).round().astype(np.uint8)


def legend(palette: Palette, present: set[int], width: int) -> np.ndarray:
    """A ``[h, width, 3]`` strip with one outlined colour swatch and the class name per class in ``present``.

    Every swatch is outlined and named, so classes whose colours look alike (CamVid's road,
    car and pavement are all purples) are still told apart.
    """
    ids = sorted(i for i in present if 0 <= i < palette.num_classes)
    line = max(_line_height(), _SWATCH[1] + 2)
    cell_w = _SWATCH[0] + _GAP + max((_text_width(palette.names[i]) for i in ids), default=0) + 3 * _GAP
    per_row = max(1, (width - _PAD) // cell_w)
    rows = max(1, -(-len(ids) // per_row))
    canvas = Image.new("RGB", (width, rows * line + 2 * _PAD), _WHITE)
    draw = ImageDraw.Draw(canvas)
    for k, cid in enumerate(ids):
        x, y = _PAD + (k % per_row) * cell_w, _PAD + (k // per_row) * line
        swatch_top = y + (line - _SWATCH[1]) // 2
        draw.rectangle([x, swatch_top, x + _SWATCH[0] - 1, swatch_top + _SWATCH[1] - 1],
                       fill=tuple(int(c) for c in palette.colors[cid]), outline=_BLACK)
        draw.text((x + _SWATCH[0] + _GAP, y), palette.names[cid], fill=_BLACK, font=_font())
    return np.asarray(canvas)


def with_legend(picture: np.ndarray, ids: np.ndarray, palette: Palette) -> np.ndarray:
    """``picture`` with a legend of the classes in ``ids`` below it (the result is taller, same width)."""
    present = set(np.unique(ids).tolist())
    return np.concatenate([picture, legend(palette, present, picture.shape[1])], axis=0)


def frame_miou(target: np.ndarray, pred: np.ndarray, palette: Palette, void_index: int | None = None) -> float:
    """Mean IoU of one frame, by the same rule as validation (classes that occur, void excluded)."""
    n = palette.num_classes
    valid = target != IGNORE_INDEX
    index = target[valid].astype(np.int64) * n + pred[valid].astype(np.int64)
    confusion = np.bincount(index, minlength=n * n).reshape(n, n)
    return metrics_from_confusion(confusion, palette.names, void_index)[0]


def spread_indices(n: int, k: int) -> list[int]:
    """``min(n, k)`` distinct indices into ``range(n)``, evenly spread: the middle of ``k`` equal stretches.

    Deterministic, so the same validation frames are shown every epoch and can be compared.
    """
    if n <= 0 or k <= 0:
        return []
    if k >= n:
        return list(range(n))
    return [(2 * i + 1) * n // (2 * k) for i in range(k)]


def panel_titles(name: str, miou: float) -> tuple[str, tuple[str, str, str]]:
    """(header line, per-panel titles) of a comparison panel for frame ``name``."""
    score = "n/a" if math.isnan(miou) else f"{miou:.3f}"
    header = f"{name}   frame mIoU {score}" if name else f"frame mIoU {score}"
    return header, ("image", "ground truth", "prediction")


def _enlarge(array: np.ndarray, factor: int) -> np.ndarray:
    return array if factor == 1 else np.repeat(np.repeat(array, factor, axis=0), factor, axis=1)


def _title_band(width: int, texts: list[tuple[int, str]]) -> np.ndarray:
    """A white band of one text line with each text drawn at its x offset."""
    band = Image.new("RGB", (width, _line_height() + _PAD), _WHITE)
    draw = ImageDraw.Draw(band)
    for x, text in texts:
        draw.text((x + _PAD, _PAD // 2), text, fill=_BLACK, font=_font())
    return np.asarray(band)


def comparison_panel(image: np.ndarray, target: np.ndarray, pred: np.ndarray, palette: Palette, *,
                     name: str = "", void_index: int | None = None) -> np.ndarray:
    """Image | ground truth overlay | prediction overlay, titled, above a legend of the classes shown.

    The header names the frame and its mIoU; each panel has its own title. Frames narrower
    than :data:`MIN_PANEL_WIDTH` are enlarged by a whole factor so the text fits.
    """
    header, titles = panel_titles(name, frame_miou(target, pred, palette, void_index))
    factor = max(1, -(-MIN_PANEL_WIDTH // image.shape[1]))
    shown, target_big, pred_big = _enlarge(image, factor), _enlarge(target, factor), _enlarge(pred, factor)
    panels = [shown, overlay(shown, target_big, palette), overlay(shown, pred_big, palette)]
    gap = np.full((shown.shape[0], _GAP, 3), 255, dtype=np.uint8)
    top = np.concatenate([panels[0], gap, panels[1], gap, panels[2]], axis=1)
    width = top.shape[1]
    offsets = [i * (shown.shape[1] + _GAP) for i in range(3)]
    present = set(np.unique(target).tolist()) | set(np.unique(pred).tolist())
    return np.concatenate([
        _title_band(width, [(0, header)]),
        _title_band(width, list(zip(offsets, titles, strict=False))),
        top,
        legend(palette, present, width),
    ], axis=0)
