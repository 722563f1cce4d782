"""Decoding real files of every pixel mode a PNG/JPEG frame or mask can have, and mask names in any case."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from support.data_files import COLORS, make_config, make_dataset, run_module, write_config_file

from dist_seg.data.checks import check_dataset
from dist_seg.data.decode import LabelSpec, load_image, load_mask
from dist_seg.data.pipeline import load_datasets, prepare
from dist_seg.errors import DataError


def test_16_bit_greyscale_frames_are_scaled_not_clipped(tmp_path):
    ramp = (np.arange(24 * 32, dtype=np.uint32).reshape(24, 32) * 85).astype(np.uint16)  # 0 .. 65195
    Image.fromarray(ramp).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode == "I;16"
    rgb = load_image(tmp_path / "g16.png", None)
    expected = np.round(ramp / 65535 * 255).astype(np.uint8)
    assert np.abs(rgb[0].astype(int) - expected).max() <= 1 and (rgb[0] == rgb[2]).all()
    assert rgb.min() == 0 and rgb.max() >= 252  # clipping made 99% of this ramp white


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "1"])
def test_8_bit_frame_modes_become_their_rgb_reading(tmp_path, mode):
    rgb = np.random.default_rng(0).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    image = Image.fromarray(rgb).convert(mode)
    image.save(tmp_path / "f.png")
    assert np.array_equal(load_image(tmp_path / "f.png", None), np.asarray(image.convert("RGB")).transpose(2, 0, 1))


def test_cmyk_jpeg_frames_are_read_and_float_frames_are_rejected_with_the_reason(tmp_path):
    Image.new("CMYK", (32, 24), (0, 255, 255, 0)).save(tmp_path / "c.jpg")
    red = load_image(tmp_path / "c.jpg", None)
    assert red[0].mean() > 200 and red[1].mean() < 60
    Image.new("F", (8, 8)).save(tmp_path / "f.tif")
    with pytest.raises(DataError, match=r"f\.tif: image has pixel mode F.*save frames as 8-bit"):
        load_image(tmp_path / "f.tif", None)


def test_masks_with_alpha_count_only_when_fully_opaque(tmp_path):
    spec = LabelSpec(tuple(make_config(tmp_path, tmp_path).dataset.classes), "rgb", "error")
    ids = np.arange(12, dtype=np.uint8).reshape(3, 4)
    rgba = np.dstack([COLORS[ids], np.full((3, 4), 255, np.uint8)])
    Image.fromarray(rgba).save(tmp_path / "opaque.png")
    assert np.array_equal(load_mask(tmp_path / "opaque.png", spec, None), ids)
    rgba[0, 0, 3] = 0
    Image.fromarray(rgba).save(tmp_path / "hole.png")
    with pytest.raises(DataError, match="hole.png: mask has 1 transparent pixels"):
        load_mask(tmp_path / "hole.png", spec, None)
    # A palette PNG of the class colours is an RGB mask too; a 16-bit index mask keeps its ids.
    Image.fromarray(COLORS[ids]).convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(tmp_path / "p.png")
    assert np.array_equal(load_mask(tmp_path / "p.png", spec, None), ids)
    Image.fromarray(ids.astype(np.uint16)).save(tmp_path / "i16.png")
    index = LabelSpec(spec.classes, "index", "error")
    assert np.array_equal(load_mask(tmp_path / "i16.png", index, None), ids)


def test_upper_case_mask_suffixes_are_found_checked_prepared_and_served(tmp_path):
    root = make_dataset(tmp_path / "data", {"Video_000": 3, "Video_001": 2})
    for mask in (root / "Labels/Video_001").iterdir():
        mask.rename(mask.with_suffix(".PNG"))
    for use_cache in (True, False):
        cfg = make_config(tmp_path / str(use_cache), root, dataset={"use_cache": use_cache, "cache_size": [24, 32],
                                                                    "split": {"val": ["Video_001"], "test": []}})
        assert not check_dataset(cfg.dataset, progress=False).problems
        prepare(cfg, log=lambda _: None, progress=False)
        val = load_datasets(cfg).val
        for i, path in enumerate(val.paths):
            mask_path = root / "Labels/Video_001" / (path.rsplit("/", 1)[1].removesuffix(".png") + ".PNG")
            assert np.array_equal(val[i].mask.numpy(), _ids(mask_path))


def _ids(path):
    rgb = np.asarray(Image.open(path).convert("RGB"))
    return np.argmax((rgb[:, :, None, :] == COLORS[None, None]).all(-1), axis=-1)


def test_sixteen_bit_frames_through_validate_and_prepare(tmp_path):
    root = make_dataset(tmp_path / "data", {"Video_000": 2, "Video_001": 2})
    frame = root / "Images/Video_000/video_000_0000.png"
    Image.fromarray(np.full((24, 32), 30000, np.uint16)).save(frame)
    cfg = make_config(tmp_path, root, dataset={"cache_size": [24, 32], "split": {"val": ["Video_001"], "test": []}})
    assert not check_dataset(cfg.dataset, progress=False).problems
    prepare(cfg, log=lambda _: None, progress=False)
    train = load_datasets(cfg).train
    image = train[train.paths.index(str(frame))].image
    assert int(image.min()) == int(image.max()) == round(30000 / 65535 * 255)


def test_validate_reports_model_errors_split_names_and_default_classes_for_index_masks(tmp_path):
    root = make_dataset(tmp_path / "data", {"Video_000": 2, "Video_001": 2}, mask_format="index")
    config = write_config_file(tmp_path, root, "  mask_format: index\n  split:\n    val: [Video_01]\n")
    result = run_module("dist_seg.validate", str(config), "--set", "model.backbone=resnet5")
    assert result.returncode == 1, result.stdout + result.stderr
    out = result.stdout
    assert "model.backbone: 'resnet5' is not a backbone of deeplabv3plus; did you mean 'resnet50'?" in out
    assert "dataset.split.val names 'Video_01', which is not a sequence here" in out
    assert "did you mean 'Video_001'?" in out
    assert "[warning]" in out and "index masks are read with the default DAVID class list" in out
    assert "Traceback" not in result.stderr

    clean = write_config_file(tmp_path, root, "  mask_format: index\n")
    ok = run_module("dist_seg.validate", str(clean))
    assert ok.returncode == 0 and "default DAVID class list" in ok.stdout


def test_prepare_warns_loudly_about_index_masks_with_the_default_classes(tmp_path):
    root = make_dataset(tmp_path / "data", {"Video_000": 2, "Video_001": 2}, mask_format="index")
    lines: list[str] = []
    prepare(make_config(tmp_path, root, dataset={"mask_format": "index", "split": {"val": ["Video_001"], "test": []}}),
            log=lines.append, progress=False)
    assert any(line.startswith("WARNING:") and "default DAVID class list" in line for line in lines)


def test_train_stops_on_a_model_error_before_any_cache_is_built(tmp_path):
    root = make_dataset(tmp_path / "data", {"Video_000": 2, "Video_001": 2})
    config = write_config_file(tmp_path, root)
    result = run_module("dist_seg.train", str(config), "--set", "model.type=lraspp", "--set",
                        "model.backbone=resnet50")
    assert result.returncode == 1
    assert "model.backbone: lraspp supports the backbones mobilenet_v3_large" in result.stderr
    assert not (tmp_path / "cache").exists()
    assert "Traceback" not in result.stderr
