"""Pictures a person reads: legend strips, titled comparison panels, the choice of frames shown."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dist_seg.config import IGNORE_INDEX, DatasetConfig
from dist_seg.data.palette import Palette
from dist_seg.eval.visualize import (
    comparison_panel,
    frame_miou,
    legend,
    overlay,
    panel_titles,
    spread_indices,
    with_legend,
)

PALETTE = Palette.from_config(DatasetConfig(root="unused"))
ROAD, SIDEWALK, CAR, VOID = 7, 8, 10, 12


def scene(height=48, width=64) -> tuple[np.ndarray, np.ndarray]:
    image = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    ids = np.full((height, width), ROAD, dtype=np.uint8)
    ids[height // 2:, :] = CAR
    ids[:, : width // 4] = SIDEWALK
    return image, ids


def colour_box(strip: np.ndarray, colour) -> tuple[int, int, int, int] | None:
    ys, xs = np.nonzero(np.all(strip == np.asarray(colour, dtype=np.uint8), axis=-1))
    return None if ys.size == 0 else (ys.min(), ys.max(), xs.min(), xs.max())


def test_overlay_with_legend_is_taller_and_shows_every_class_colour_outlined():
    image, ids = scene()
    picture = with_legend(overlay(image, ids, PALETTE), ids, PALETTE)

    assert picture.shape[0] > image.shape[0] and picture.shape[1:] == image.shape[1:]
    assert np.array_equal(picture[: image.shape[0]], overlay(image, ids, PALETTE))  # the frame is untouched
    strip = picture[image.shape[0]:]
    for cid in (ROAD, SIDEWALK, CAR):  # road, sidewalk and car are all purples/blues
        box = colour_box(strip, PALETTE.colors[cid])
        assert box is not None, PALETTE.names[cid]
        top, bottom, left, right = box
        border = np.concatenate([strip[top - 1, left - 1:right + 2], strip[bottom + 1, left - 1:right + 2],
                                 strip[top:bottom + 1, left - 1], strip[top:bottom + 1, right + 1]])
        assert np.all(border == 0), f"swatch of {PALETTE.names[cid]} is not outlined"
    assert colour_box(strip, PALETTE.colors[0]) is None  # traffic_sign is not in the frame: not listed


def test_legend_wraps_onto_more_rows_when_narrow_and_names_every_class():
    everything = set(range(PALETTE.num_classes))
    wide, narrow = legend(PALETTE, everything, 1200), legend(PALETTE, everything, 300)
    assert narrow.shape[0] > wide.shape[0]
    for strip in (wide, narrow):
        assert all(colour_box(strip, PALETTE.colors[c]) is not None for c in everything if c != VOID)
    assert legend(PALETTE, {ROAD, IGNORE_INDEX}, 300).shape == legend(PALETTE, {ROAD}, 300).shape


def test_frame_miou_follows_validation_rule():
    target = np.array([[ROAD, ROAD, CAR, CAR], [VOID, VOID, IGNORE_INDEX, IGNORE_INDEX]], dtype=np.uint8)
    pred = np.array([[ROAD, CAR, CAR, CAR], [VOID, ROAD, CAR, CAR]], dtype=np.uint8)
    # road: tp 1, union 3; car: tp 2, union 3; void excluded; ignored pixels count nowhere
    assert frame_miou(target, pred, PALETTE, void_index=VOID) == pytest.approx((1 / 3 + 2 / 3) / 2)
    assert frame_miou(target, pred, PALETTE, void_index=None) == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    assert math.isnan(frame_miou(np.full((2, 2), IGNORE_INDEX, np.uint8), pred[:, :2], PALETTE))


def test_comparison_panel_has_titles_above_each_panel():
    image, target = scene()
    pred = target.copy()
    pred[:, -8:] = SIDEWALK
    miou = frame_miou(target, pred, PALETTE, VOID)
    header, titles = panel_titles("v003_0004", miou)
    assert header.startswith("v003_0004") and f"mIoU {miou:.3f}" in header
    assert titles == ("image", "ground truth", "prediction")
    assert "n/a" in panel_titles("x", float("nan"))[0]

    panel = comparison_panel(image, target, pred, PALETTE, name="v003_0004", void_index=VOID)
    other = comparison_panel(image, target, pred, PALETTE, name="v001_0000", void_index=VOID)
    scale = panel.shape[1] // (3 * image.shape[1])  # small frames are enlarged so the titles fit
    assert scale >= 2
    big = np.repeat(np.repeat(image, scale, 0), scale, 1)
    width = big.shape[1]
    image_top = next(row for row in range(panel.shape[0]) if np.array_equal(panel[row, :width], big[0]))
    assert np.array_equal(panel[image_top:image_top + big.shape[0], :width], big)
    assert panel.shape[0] > image_top + big.shape[0]  # the legend sits below

    header_band, title_band = panel[:image_top // 2], panel[image_top // 2:image_top]  # two equal bands
    assert not np.array_equal(header_band, other[:image_top // 2])  # the frame name is drawn
    assert np.array_equal(title_band, other[image_top // 2:image_top])
    for k in range(3):  # every panel has dark title text above it
        columns = title_band[:, k * (width + 4): k * (width + 4) + width]
        assert (columns < 128).all(axis=-1).any(), titles[k]


@pytest.mark.parametrize("n, k, expected", [
    (10, 4, [1, 3, 6, 8]),
    (3, 4, [0, 1, 2]),
    (4, 4, [0, 1, 2, 3]),
    (0, 4, []),
    (100, 0, []),
    (305, 4, [38, 114, 190, 266]),
])
def test_spread_indices_are_evenly_spaced_and_distinct(n, k, expected):
    chosen = spread_indices(n, k)
    assert chosen == expected == spread_indices(n, k)
    assert len(set(chosen)) == len(chosen) and all(0 <= i < n for i in chosen)
