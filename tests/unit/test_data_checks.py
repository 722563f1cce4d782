"""Discovery (pairing, filters) and dataset checks (every problem in one pass, validate CLI exit codes)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from support.data_files import COLORS, make_config, make_dataset, run_module, write_config_file, write_frame

from dist_seg.data.checks import check_dataset
from dist_seg.data.discovery import discover
from dist_seg.data.pipeline import load_datasets, prepare
from dist_seg.errors import DataError


def test_discovery_pairs_frames_in_sorted_order_and_records_orphans(tmp_path):
    root = make_dataset(tmp_path / "data", {"Video_001": 2, "Video_000": 3})
    rng = np.random.default_rng(1)
    image, _ = write_frame(root, "Video_000", "extra_jpg", rng, image_ext=".jpg")
    orphan_image, orphan_mask = write_frame(root, "Video_001", "zz_orphan", rng)
    orphan_mask.unlink()
    _, lonely_mask = write_frame(root, "Video_001", "zz_lonely", rng)
    (root / "Images" / "Video_001" / "zz_lonely.png").unlink()
    (root / "Images" / "Video_000" / ".DS_Store").write_bytes(b"junk")

    listing = discover(root, make_config(tmp_path, root).dataset)

    assert listing.sequence_names == ["Video_000", "Video_001"]
    seq0, seq1 = listing.sequences
    assert [f.image.name for f in seq0.frames] == ["extra_jpg.jpg", "video_000_0000.png", "video_000_0001.png",
                                                    "video_000_0002.png"]
    assert all(f.mask == root / "Labels" / f.sequence / f"{f.stem}.png" for f in listing.frames)
    assert seq0.frames[0].image == image
    assert seq1.images_without_mask == (orphan_image,)
    assert seq1.masks_without_image == (lonely_mask,)
    assert len(listing.frames) == 6


def test_include_and_exclude_filter_sequences_and_unknown_includes_are_reported(tmp_path):
    root = make_dataset(tmp_path / "data", {"Video_000": 1, "Video_001": 1, "Video_002": 1})
    ds = make_config(tmp_path, root, dataset={"include": ["Video_000", "Video_002", "Vidoe_001"],
                                              "exclude": ["Video_002"]}).dataset
    listing = discover(root, ds)
    assert listing.sequence_names == ["Video_000"]
    assert listing.unknown_includes == (("Vidoe_001", "Video_001"),)

    report = check_dataset(make_config(tmp_path, root, dataset={"include": ["Vidoe_001"]}).dataset, progress=False)
    assert len(report.errors) == 1
    assert "'Vidoe_001'" in report.format() and "did you mean 'Video_001'?" in report.format()


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_validate_cli_lists_every_problem_at_once_and_exits_1(tmp_path):
    root = make_dataset(tmp_path / "data", {"Video_000": 3, "Video_001": 2, "Video_002": 1}, seed=3)
    rng = np.random.default_rng(7)
    # Frame without mask, mask without frame.
    write_frame(root, "Video_000", "nomask", rng)[1].unlink()
    write_frame(root, "Video_000", "noframe", rng)[0].unlink()
    # Image/mask size mismatch.
    Image.fromarray(COLORS[np.zeros((10, 10), dtype=np.uint8)]).save(root / "Labels/Video_001/video_001_0000.png")
    # Truncated image.
    _truncate(root / "Images/Video_001/video_001_0001.png")
    # Colour not in the palette.
    stray = np.array(Image.open(root / "Labels/Video_000/video_000_0001.png"))
    stray[:2, :3] = (1, 2, 3)
    Image.fromarray(stray).save(root / "Labels/Video_000/video_000_0001.png")
    # Sequence without label folder, and an empty sequence.
    for path in (root / "Labels/Video_002").iterdir():
        path.unlink()
    (root / "Labels/Video_002").rmdir()
    (root / "Images/Video_003").mkdir()
    config = write_config_file(tmp_path, root, "  cache_workers: 2\n")

    result = run_module("dist_seg.validate", str(config))

    assert result.returncode == 1, result.stderr
    out = result.stdout
    assert "1 frame(s) of Video_000 have no mask (nomask.png)" in out
    assert "1 mask(s) of Video_000 have no frame (noframe.png)" in out
    assert "video_001_0000.png: mask is 10x10 (HxW) but its image video_001_0000.png is 24x32" in out
    assert "video_001_0001.png: cannot read image" in out
    assert "colour [1, 2, 3] is not in the palette" in out and "6 pixels in 1 mask(s) (video_000_0001.png)" in out
    assert "sequence Video_002 has no label folder" in out
    assert "Video_003: sequence folder has no images" in out
    assert out.count("fix:") == 7
    assert "Traceback" not in result.stderr


def test_validate_cli_exits_0_on_clean_data_and_reports_config_errors_cleanly(tmp_path):
    root = make_dataset(tmp_path / "data", {"Video_000": 2, "Video_001": 2})
    config = write_config_file(tmp_path, root)
    result = run_module("dist_seg.validate", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("dataset OK:") and "2 sequences, 4 frames" in result.stdout

    bad = run_module("dist_seg.validate", str(config), "--set", "dataset.mask_fromat=index")
    assert bad.returncode == 1
    assert bad.stderr.startswith("error: ") and "did you mean dataset.mask_format?" in bad.stderr
    assert "Traceback" not in bad.stderr
    assert run_module("dist_seg.validate").returncode == 2


def test_prepare_cli_refuses_missing_folders_with_the_fix(tmp_path):
    config = write_config_file(tmp_path, tmp_path / "nowhere")
    result = run_module("dist_seg.prepare", str(config))
    assert result.returncode == 1
    assert "image folder does not exist" in result.stderr and "check dataset.root" in result.stderr
    assert "Traceback" not in result.stderr


def _paint_stray(path, color=(9, 9, 9)):
    mask = np.array(Image.open(path))
    mask[0, :4] = color
    Image.fromarray(mask).save(path)


def test_unknown_colours_are_an_error_by_default_and_ignored_in_void_mode(tmp_path):
    root = make_dataset(tmp_path / "data", {"Video_000": 2, "Video_001": 2})
    _paint_stray(root / "Labels/Video_001/video_001_0001.png")
    # Full resolution cache so the painted pixels survive exactly.
    strict = make_config(tmp_path, root, dataset={"cache_size": [24, 32]})
    with pytest.raises(DataError) as excinfo:
        prepare(strict, log=lambda _: None, progress=False)
    assert ("colour [9, 9, 9] is not in the palette (dataset.classes): 4 pixels in 1 mask(s) (video_001_0001.png)"
            in str(excinfo.value))
    assert "dataset.unknown_colors: void" in str(excinfo.value)

    void = make_config(tmp_path, root, dataset={"cache_size": [24, 32], "unknown_colors": "void"})
    summary = prepare(void, log=lambda _: None, progress=False)
    assert [w.severity for w in summary.warnings] == ["warning"]
    assert summary.ignored_pixels == 4
    data = load_datasets(void)
    everything = [ds for ds in (data.train, data.val, data.test) if ds is not None]
    masks = {path: mask for ds in everything for _, mask, path in (ds[i] for i in range(len(ds)))}
    painted = masks[str(root / "Images/Video_001/video_001_0001.png")]
    assert painted[0, :4].tolist() == [255] * 4 and (painted[1:] != 255).all()


def test_index_masks_accept_ignore_label_and_flag_out_of_range_ids(tmp_path):
    root = make_dataset(tmp_path / "data", {"Video_000": 2}, mask_format="index")
    good = root / "Labels/Video_000/video_000_0000.png"
    ids = np.array(Image.open(good))
    ids[0, 0] = 255
    Image.fromarray(ids).save(good)
    bad = root / "Labels/Video_000/video_000_0001.png"
    ids = np.array(Image.open(bad))
    ids[:2, :2] = 40
    Image.fromarray(ids).save(bad)

    report = check_dataset(make_config(tmp_path, root, dataset={"mask_format": "index"}).dataset, progress=False)
    assert len(report.errors) == 1
    assert "class id 40 is outside 0..12 (and 255 = ignore): 4 pixels in 1 mask(s) (video_000_0001.png)" \
        in report.format()

    rgb_report = check_dataset(make_config(tmp_path, root).dataset, progress=False)
    assert "set dataset.mask_format: index" in rgb_report.format()

    void = check_dataset(make_config(tmp_path, root, dataset={"mask_format": "index", "unknown_colors": "void"}).dataset,
                         progress=False)
    assert not void.errors and [w.kind for w in void.warnings] == ["unknown-colour", "default-classes"]
