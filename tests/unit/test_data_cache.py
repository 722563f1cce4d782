"""Caches (built right, reused without decoding, rebuilt when stale, never half-valid) and datasets."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from support.data_files import REPO_ROOT, make_config, make_dataset

from dist_seg.config import DAVID_CLASSES
from dist_seg.data.cache import LAST_USED, MANIFEST, cache_root, dataset_cache_dir
from dist_seg.data.checks import check_dataset
from dist_seg.data.dataset import Batch, CachedDataset, DecodeDataset
from dist_seg.data.palette import Palette
from dist_seg.data.pipeline import load_datasets, prepare
from dist_seg.errors import DataError
from dist_seg.synth import generate_dataset

SEQUENCES = {"Video_000": 3, "Video_001": 2, "Video_002": 2}


def _quiet(cfg):
    return prepare(cfg, log=lambda _: None, progress=False)


def _prepared(tmp_path, root):
    cfg = make_config(tmp_path, root)
    _quiet(cfg)
    return cfg


def _all_items(bundle):
    """``{path: (image, mask)}`` over every split."""
    items = {}
    for ds in (bundle.train, bundle.val, bundle.test):
        for i in range(len(ds) if ds is not None else 0):
            image, mask, path = ds[i]
            items[path] = (image, mask)
    return items


@pytest.fixture
def dataset_root(tmp_path):
    return make_dataset(tmp_path / "data", SEQUENCES)


def test_cache_holds_lut_ids_and_resized_images(tmp_path, dataset_root):
    cfg = make_config(tmp_path, dataset_root)
    summary = _quiet(cfg)
    assert sorted(summary.built) == sorted(SEQUENCES) and not summary.reused
    bundle = load_datasets(cfg)
    items = _all_items(bundle)
    assert len(items) == 7
    palette = Palette(DAVID_CLASSES)
    h, w = 16, 20
    for path, (image, mask) in items.items():
        mask_png = str(path).replace("/Images/", "/Labels/")
        ids = palette.rgb_to_ids(np.array(Image.open(mask_png).convert("RGB")))
        expected_mask = np.array(Image.fromarray(ids).resize((w, h), Image.NEAREST))
        expected_image = np.array(Image.open(path).convert("RGB").resize((w, h), Image.BILINEAR)).transpose(2, 0, 1)
        assert image.dtype == torch.uint8 and image.shape == (3, h, w) and image.is_contiguous()
        assert mask.dtype == torch.uint8 and mask.shape == (h, w)
        np.testing.assert_array_equal(mask.numpy(), expected_mask)
        np.testing.assert_array_equal(image.numpy(), expected_image)
    train_masks = [m.numpy() for p, (_, m) in items.items() if any(p in s for s in bundle.train.paths)]
    expected_counts = np.bincount(np.concatenate([m.ravel() for m in train_masks]), minlength=13)[:13]
    np.testing.assert_array_equal(bundle.train_class_pixel_counts, expected_counts)


def test_fresh_cache_is_reused_without_reading_any_image(tmp_path, dataset_root, monkeypatch):
    cfg = make_config(tmp_path, dataset_root)
    _quiet(cfg)
    before = _all_items(load_datasets(cfg))
    # Any file rewrite changes its ctime (and so the fingerprint): opening any image fails instead.
    def no_open(*_args, **_kwargs):
        raise AssertionError("a fresh cache must be reused without opening a frame")

    monkeypatch.setattr(Image, "open", no_open)
    summary = _quiet(cfg)
    monkeypatch.undo()
    assert summary.built == [] and sorted(summary.reused) == sorted(SEQUENCES)

    for path in list(dataset_root.rglob("*.png")):
        path.unlink()
    after = _all_items(load_datasets(cfg))
    assert after.keys() == before.keys()
    for path, (image, mask) in after.items():
        assert torch.equal(image, before[path][0]) and torch.equal(mask, before[path][1])


def test_stale_sequence_is_rebuilt_alone_with_the_new_content(tmp_path, dataset_root):
    cfg = make_config(tmp_path, dataset_root, dataset={"cache_size": [24, 32]})
    _quiet(cfg)
    touched = dataset_root / "Labels/Video_001/video_001_0000.png"
    stat = touched.stat()
    os.utime(touched, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    lines: list[str] = []
    summary = prepare(cfg, log=lines.append, progress=False)
    assert summary.built == ["Video_001"] and "cache: building Video_001 (1 frames modified)" in lines

    Image.fromarray(np.full((24, 32, 3), (128, 64, 128), dtype=np.uint8)).save(touched)  # all road
    assert _quiet(cfg).built == ["Video_001"]
    mask = _all_items(load_datasets(cfg))[str(dataset_root / "Images/Video_001/video_001_0000.png")][1]
    assert (mask == 7).all()
    sequence_dir = dataset_cache_dir(dataset_root, cfg) / "Video_001"
    assert len(list(sequence_dir.glob("masks-*.npy"))) == 1  # superseded arrays are removed


def test_changed_settings_invalidate_the_cache_for_loading(tmp_path, dataset_root):
    cfg = make_config(tmp_path, dataset_root)
    _quiet(cfg)
    other_palette = make_config(tmp_path, dataset_root, dataset={"classes": [
        {"name": c.name, "color": list(c.color)} for c in reversed(DAVID_CLASSES)]})
    # other settings, another cache folder: nothing built there yet
    assert dataset_cache_dir(dataset_root, other_palette) != dataset_cache_dir(dataset_root, cfg)
    with pytest.raises(DataError, match=r"not usable \(not built yet\).*python -m dist_seg.prepare"):
        load_datasets(other_palette)
    assert sorted(_quiet(other_palette).built) == sorted(SEQUENCES)
    assert sorted(_quiet(cfg).reused) == sorted(SEQUENCES)  # the first setting's caches are still there


def test_build_killed_before_its_manifest_leaves_nothing_valid(tmp_path, dataset_root):
    # A real SIGKILL at the worst moment: arrays of one sequence already renamed into place,
    # the other sequences' arrays still temporary, no manifest written yet.
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(REPO_ROOT / 'tests')!r})
        from support.data_files import make_config
        from dist_seg import atomic
        from dist_seg.data.pipeline import prepare
        from pathlib import Path
        write_text = atomic.write_text
        def die_before_manifest(path, text):
            if Path(path).name == {MANIFEST!r}:
                os.kill(os.getpid(), signal.SIGKILL)
            write_text(path, text)
        atomic.write_text = die_before_manifest
        prepare(make_config(Path({str(tmp_path)!r}), Path({str(dataset_root)!r})), log=print, progress=False)
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == -9, result.stderr

    cfg = make_config(tmp_path, dataset_root)
    cache_dir = dataset_cache_dir(dataset_root, cfg)
    assert list(cache_dir.rglob("masks-*.npy")) and list(cache_dir.rglob("*.tmp"))
    assert not list(cache_dir.rglob(MANIFEST))
    lines: list[str] = []
    summary = prepare(cfg, log=lines.append, progress=False)
    assert sorted(summary.built) == sorted(SEQUENCES)
    assert "cache: building Video_000 (not built yet)" in lines
    assert not list(cache_dir.rglob("*.tmp"))
    assert len(_all_items(load_datasets(cfg))) == 7


def test_missing_manifest_or_splits_tell_the_user_to_run_prepare(tmp_path, dataset_root):
    cfg = make_config(tmp_path, dataset_root)
    with pytest.raises(DataError, match="splits.json does not exist: run python -m dist_seg.prepare"):
        load_datasets(cfg)
    _quiet(cfg)
    (dataset_cache_dir(dataset_root, cfg) / "Video_001" / MANIFEST).unlink()
    with pytest.raises(DataError, match="Video_001.*not built yet.*python -m dist_seg.prepare"):
        load_datasets(cfg)


def test_decode_path_and_uncached_images_match_the_cache_exactly(tmp_path, dataset_root):
    cached = _all_items(load_datasets(_prepared(tmp_path, dataset_root)))
    for options in ({"use_cache": False}, {"cache_images": False}):
        cfg = make_config(tmp_path, dataset_root, dataset=options)
        _quiet(cfg)
        bundle = load_datasets(cfg)
        expected_type = DecodeDataset if options.get("use_cache") is False else CachedDataset
        assert isinstance(bundle.train, expected_type)
        other = _all_items(bundle)
        assert other.keys() == cached.keys()
        for path, (image, mask) in other.items():
            assert torch.equal(image, cached[path][0]) and torch.equal(mask, cached[path][1])


def test_batched_fetch_equals_single_items_and_pickles_without_arrays(tmp_path, dataset_root):
    dataset = load_datasets(_prepared(tmp_path, dataset_root)).train
    indices = list(range(len(dataset)))[::-1]
    batch = dataset.__getitems__(indices)
    assert isinstance(batch, Batch) and batch.images.shape == (len(indices), 3, 16, 20)
    for k, i in enumerate(indices):
        image, mask, path = dataset[i]
        assert torch.equal(batch.images[k], image) and torch.equal(batch.masks[k], mask) and batch.paths[k] == path
    assert len(pickle.dumps(dataset)) < 10_000  # memmaps are reopened by each worker, never pickled
    with pytest.raises(IndexError):
        dataset[len(dataset)]


def test_default_cache_location_comes_from_the_environment(tmp_path, monkeypatch, dataset_root):
    cfg = make_config(tmp_path, dataset_root, dataset={"cache_dir": None})
    monkeypatch.setenv("DIST_SEG_CACHE", str(tmp_path / "env-cache"))
    assert cache_root(cfg.dataset) == tmp_path / "env-cache"
    assert dataset_cache_dir(dataset_root, cfg).parent.parent == tmp_path / "env-cache"
    monkeypatch.delenv("DIST_SEG_CACHE")
    assert cache_root(cfg.dataset) == Path.home() / ".cache" / "dist_seg"


def test_test_root_sequences_are_cached_and_served_as_the_test_split(tmp_path, dataset_root):
    test_root = make_dataset(tmp_path / "test", {"Video_000": 2}, seed=5)
    cfg = make_config(tmp_path, dataset_root, dataset={"test_root": str(test_root)})
    summary = _quiet(cfg)
    assert len(summary.cache_dirs) == 2 and summary.split_counts["test"] == (1, 2)
    bundle = load_datasets(cfg)
    assert bundle.test.paths == [str(test_root / f"Images/Video_000/video_000_000{i}.png") for i in range(2)]


def test_synthetic_dataset_validates_prepares_and_loads(tmp_path):
    root = generate_dataset(tmp_path / "synth", sequences=2, frames=3, size=(24, 32)).root
    cfg = make_config(tmp_path, root)
    assert not check_dataset(cfg.dataset, progress=False).problems
    summary = _quiet(cfg)
    assert summary.split_counts == {"train": (1, 3), "val": (1, 3), "test": (0, 0)}
    bundle = load_datasets(cfg)
    assert bundle.train_class_pixel_counts.sum() == 3 * 16 * 20


def test_index_and_rgb_mask_settings_get_their_own_cache_folders(tmp_path, dataset_root):
    rgb = make_config(tmp_path, dataset_root)
    index = make_config(tmp_path, dataset_root, dataset={"mask_format": "index"})
    assert dataset_cache_dir(dataset_root, rgb) != dataset_cache_dir(dataset_root, index)
    assert dataset_cache_dir(dataset_root, rgb).parent == dataset_cache_dir(dataset_root, index).parent
    assert dataset_cache_dir(dataset_root, rgb) == dataset_cache_dir(dataset_root, make_config(tmp_path, dataset_root))
    _quiet(rgb)
    assert _quiet(rgb).reused  # the other setting's folder did not disturb this one


def test_only_the_most_recently_used_setting_folders_are_kept(tmp_path, dataset_root):
    cfg = make_config(tmp_path, dataset_root, dataset={"cache_keep_settings": 2})
    current = dataset_cache_dir(dataset_root, cfg)
    dataset_dir = current.parent
    older = [dataset_dir / "16x16-0000000a", dataset_dir / "16x16-0000000b", dataset_dir / "24x32"]
    for age, folder in enumerate(older):
        folder.mkdir(parents=True)
        (folder / LAST_USED).touch()
        os.utime(folder / LAST_USED, (1000 - age, 1000 - age))  # a used most recently, 24x32 (pre-digest name) least
    (dataset_dir / "native").mkdir()
    _quiet(cfg)
    assert sorted(p.name for p in dataset_dir.iterdir()) == sorted([current.name, "16x16-0000000a", "native"])
