"""Frames and masks as cameras and tools write them: greyscale and 1-bit masks, EXIF-rotated JPEGs, index masks
that are mostly 255.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from support.helpers import tiny_config

from dist_seg.config.classes import ClassSpec
from dist_seg.data.decode import LabelSpec, load_image, load_mask

pytestmark = pytest.mark.slow


BINARY = LabelSpec(classes=(ClassSpec("background", (0, 0, 0)), ClassSpec("road", (255, 255, 255))),
                   mask_format="rgb", unknown_colors="error")


@pytest.mark.parametrize("mode", ["L", "1"])
def test_black_and_white_mask_is_read_as_its_colours_in_rgb_format(tmp_path, mode):
    """A binary mask saved greyscale holds exactly the colours black and white: read it, don't refuse it."""
    values = np.zeros((4, 6), np.uint8)
    values[:, 3:] = 255
    path = tmp_path / "mask.png"
    Image.fromarray(values, "L").convert(mode).save(path)
    ids = load_mask(path, BINARY, None)
    assert ids.tolist() == [[0, 0, 0, 1, 1, 1]] * 4


def test_greyscale_mask_with_class_ids_in_rgb_format_still_points_to_index(tmp_path):
    path = tmp_path / "mask.png"
    Image.fromarray(np.array([[0, 1], [2, 1]], np.uint8), "L").save(path)
    with pytest.raises(Exception, match="dataset.mask_format: index"):
        load_mask(path, BINARY, None)


def test_exif_rotated_frame_is_decoded_upright(tmp_path):
    """A camera JPEG stored sideways with an EXIF orientation is used as every viewer shows it."""
    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:, :20] = 255  # left half white as stored; orientation 3 (180 degrees) shows it on the right
    exif = Image.Exif()
    exif[0x0112] = 3
    path = tmp_path / "frame.jpg"
    Image.fromarray(stored).save(path, exif=exif, quality=100)
    upright = load_image(path, None)  # [3, H, W]
    assert upright.shape == (3, 20, 40)
    assert upright[:, :, :15].mean() < 10 and upright[:, :, 25:].mean() > 245

    exif[0x0112] = 6  # 90 degrees: the upright frame is 40 high, 20 wide
    Image.fromarray(stored).save(path, exif=exif, quality=100)
    assert load_image(path, None).shape == (3, 40, 20)


def _binary_dataset(root: Path, frames: int = 3) -> Path:
    """One sequence of 16x16 frames whose masks are black-and-white: 0 background, 255 road on 3/4 of each."""
    for i in range(frames):
        (root / "Images" / "seq").mkdir(parents=True, exist_ok=True)
        (root / "Labels" / "seq").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((16, 16, 3), 40 * i, np.uint8)).save(root / "Images" / "seq" / f"f{i}.png")
        mask = np.zeros((16, 16), np.uint8)
        mask[4:] = 255
        Image.fromarray(mask, "L").save(root / "Labels" / "seq" / f"f{i}.png")
    return root


def test_index_masks_that_are_mostly_255_get_a_warning_naming_the_fix(tmp_path):
    """Under mask_format: index, 255 is "not annotated": a 0/255 binary dataset would silently train on the background."""
    from dist_seg.data.checks import check_dataset

    root = _binary_dataset(tmp_path / "data")
    classes = [{"name": "background", "color": [0, 0, 0]}, {"name": "road", "color": [255, 255, 255]}]
    cfg = tiny_config(root, tmp_path / "out", dataset__classes=classes, dataset__mask_format="index",
                      dataset__split={"val_fraction": 0.0, "test_fraction": 0.0})
    report = check_dataset(cfg.dataset, progress=False)
    [warning] = [p for p in report.warnings if p.kind == "mostly-unannotated"]
    assert "3 of 3 masks have more than half their pixels 255" in str(warning)
    assert "dataset.mask_format: rgb" in str(warning)
    # Read as colours, the same masks are fine: no warning, no error.
    rgb = tiny_config(root, tmp_path / "out", dataset__classes=classes, dataset__mask_format="rgb",
                      dataset__split={"val_fraction": 0.0, "test_fraction": 0.0})
    report = check_dataset(rgb.dataset, progress=False)
    assert not report.errors and not report.warnings
