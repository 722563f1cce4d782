"""Synthetic DAVID-style data: layout, exact palette, determinism, temporal coherence, image signal, CLI."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dist_seg.config.classes import DAVID_CLASSES, ClassSpec
from dist_seg.data.palette import Palette
from dist_seg.synth import generate_dataset

REPO = Path(__file__).resolve().parents[2]
SIZE = (120, 160)
SEQUENCES, FRAMES, SEED = 3, 4, 7
PALETTE = Palette(DAVID_CLASSES)


def _stem(s: int, f: int) -> tuple[str, str]:
    return f"Video_{s:03d}", f"v{s:03d}_{f:04d}"


def _label_rgb(root: Path, s: int, f: int) -> np.ndarray:
    seq, stem = _stem(s, f)
    return np.array(Image.open(root / "Labels" / seq / f"{stem}.png"))


def _ids(root: Path, s: int, f: int) -> np.ndarray:
    return PALETTE.rgb_to_ids(_label_rgb(root, s, f))


def _image(root: Path, s: int, f: int) -> np.ndarray:
    seq, stem = _stem(s, f)
    return np.array(Image.open(root / "Images" / seq / f"{stem}.png"))


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "rgb"
    summary = generate_dataset(root, sequences=SEQUENCES, frames=FRAMES, size=SIZE, seed=SEED)
    return root, summary


def test_writes_david_layout(dataset):
    root, summary = dataset
    expected = set()
    for s in range(SEQUENCES):
        for f in range(FRAMES):
            seq, stem = _stem(s, f)
            expected |= {f"Images/{seq}/{stem}.png", f"Labels/{seq}/{stem}.png"}
    assert set(_files(root)) == expected  # no stray temporary files either
    image = Image.open(root / "Images/Video_002/v002_0003.png")
    label = Image.open(root / "Labels/Video_002/v002_0003.png")
    assert (image.mode, image.size) == ("RGB", (SIZE[1], SIZE[0]))
    assert (label.mode, label.size) == ("RGB", (SIZE[1], SIZE[0]))
    assert (summary.root, summary.sequences, summary.frames, summary.size) == (root, SEQUENCES, FRAMES, SIZE)


def test_labels_use_exact_palette_colours(dataset):
    root, _ = dataset
    for s in range(SEQUENCES):
        for f in range(FRAMES):
            assert PALETTE.unknown_colors(_label_rgb(root, s, f)) == {}


def test_every_david_class_is_drawn_and_counted(dataset):
    root, summary = dataset
    counts = np.zeros(len(DAVID_CLASSES), dtype=np.int64)
    for s in range(SEQUENCES):
        for f in range(FRAMES):
            counts += np.bincount(_ids(root, s, f).ravel(), minlength=len(DAVID_CLASSES))
    assert (counts > 0).all(), {c.name: int(n) for c, n in zip(DAVID_CLASSES, counts, strict=False)}
    assert summary.class_pixel_counts == {c.name: int(n) for c, n in zip(DAVID_CLASSES, counts, strict=False)}
    assert sum(summary.class_pixel_counts.values()) == SEQUENCES * FRAMES * SIZE[0] * SIZE[1]


def test_same_seed_gives_identical_bytes_and_other_seed_differs(tmp_path):
    a = generate_dataset(tmp_path / "a", sequences=1, frames=2, size=(48, 64), seed=3).root
    b = generate_dataset(tmp_path / "b", sequences=1, frames=2, size=(48, 64), seed=3).root
    c = generate_dataset(tmp_path / "c", sequences=1, frames=2, size=(48, 64), seed=4).root
    assert _files(a) == _files(b)
    assert not np.array_equal(_ids(a, 0, 0), _ids(c, 0, 0))
    assert not np.array_equal(_image(a, 0, 0), _image(c, 0, 0))


def test_a_shorter_run_is_a_prefix_of_a_longer_one(dataset, tmp_path):
    root, _ = dataset
    short = generate_dataset(tmp_path / "short", sequences=1, frames=2, size=SIZE, seed=SEED).root
    long_files = _files(root)
    for name, data in _files(short).items():
        assert long_files[name] == data, name


def test_consecutive_frames_agree_far_more_than_other_sequences(dataset):
    root, _ = dataset
    ids = {(s, f): _ids(root, s, f) for s in range(SEQUENCES) for f in range(FRAMES)}
    consecutive = [np.mean(ids[s, f] == ids[s, f + 1]) for s in range(SEQUENCES) for f in range(FRAMES - 1)]
    across = [np.mean(ids[a, f] == ids[b, f]) for a in range(SEQUENCES) for b in range(a + 1, SEQUENCES)
              for f in range(FRAMES)]
    assert np.mean(consecutive) > 0.8
    assert np.mean(consecutive) > np.mean(across) + 0.15
    # The camera moves: no two consecutive frames are the same picture.
    assert max(consecutive) < 0.995


def test_index_masks_hold_the_same_classes_as_rgb_masks(dataset, tmp_path):
    root, _ = dataset
    index_root = generate_dataset(tmp_path / "index", sequences=1, frames=FRAMES, size=SIZE, seed=SEED,
                                  mask_format="index").root
    for f in range(FRAMES):
        seq, stem = _stem(0, f)
        label = Image.open(index_root / "Labels" / seq / f"{stem}.png")
        assert label.mode == "L"
        np.testing.assert_array_equal(np.array(label), _ids(root, 0, f))
        image = f"Images/{seq}/{stem}.png"
        assert (index_root / image).read_bytes() == (root / image).read_bytes()


def _pixels(root: Path, s: int) -> tuple[np.ndarray, np.ndarray]:
    x = np.concatenate([_image(root, s, f).reshape(-1, 3) for f in range(FRAMES)]).astype(np.float64)
    y = np.concatenate([_ids(root, s, f).ravel() for f in range(FRAMES)])
    return x, y


def test_images_carry_colour_signal_that_transfers_across_sequences(dataset):
    """A per-pixel colour classifier fit on one sequence beats chance on the others, far from perfectly.

    The classifier is nearest-class-mean with class priors (an isotropic Gaussian model):
    the crudest model that uses pixel colour and nothing else.
    """
    root, _ = dataset
    x, y = _pixels(root, 0)
    classes = np.unique(y)
    means = np.stack([x[y == c].mean(axis=0) for c in classes])
    var = np.mean([((x[y == c] - means[i]) ** 2).mean() for i, c in enumerate(classes)])
    log_prior = np.log(np.array([np.mean(y == c) for c in classes]))
    for s in range(1, SEQUENCES):
        xt, yt = _pixels(root, s)
        dist = ((xt[:, None, :] - means[None]) ** 2).sum(axis=-1)
        predicted = classes[np.argmax(-dist / (2 * var) + log_prior, axis=1)]
        accuracy = np.mean(predicted == yt)
        majority = np.bincount(yt).max() / yt.size
        assert 0.5 < accuracy < 0.99, (s, accuracy)
        assert accuracy > majority + 0.1, (s, accuracy, majority)


def test_images_are_not_painted_in_label_colours(dataset):
    root, _ = dataset
    image = _image(root, 1, 2).astype(np.int16)
    label = _label_rgb(root, 1, 2).astype(np.int16)
    assert np.abs(image - label).mean() > 30


def test_custom_class_list_is_matched_by_name(tmp_path):
    custom = [ClassSpec(c.name, (i * 17, 255 - i * 13, (i * 91) % 256)) for i, c in enumerate(reversed(DAVID_CLASSES))]
    custom.append(ClassSpec("bicycle", (1, 2, 3)))  # extra classes are allowed, never drawn
    david = generate_dataset(tmp_path / "david", sequences=1, frames=1, size=(48, 64), seed=1).root
    other = generate_dataset(tmp_path / "custom", sequences=1, frames=1, size=(48, 64), seed=1, classes=custom)
    custom_ids = Palette(tuple(custom)).rgb_to_ids(_label_rgb(other.root, 0, 0))
    names = [c.name for c in custom]
    david_to_custom = np.array([names.index(c.name) for c in DAVID_CLASSES])
    np.testing.assert_array_equal(custom_ids, david_to_custom[_ids(david, 0, 0)])
    assert other.class_pixel_counts["bicycle"] == 0


def test_class_list_without_a_david_name_is_rejected(tmp_path):
    classes = [c for c in DAVID_CLASSES if c.name != "pole"] + [ClassSpec("lamp_post", (1, 2, 3))]
    with pytest.raises(ValueError, match="missing: pole"):
        generate_dataset(tmp_path / "out", classes=classes)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kwargs", [
    {"size": (8, 64)}, {"size": (64,)}, {"sequences": 0}, {"frames": 0}, {"seed": -1},
    {"mask_format": "png"}, {"image_ext": ".bmp"},
    {"classes": [ClassSpec(c.name, (0, 0, 0)) for c in DAVID_CLASSES]},
])
def test_invalid_arguments_are_rejected_before_writing(tmp_path, kwargs):
    with pytest.raises(ValueError):
        generate_dataset(tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_jpeg_frames(tmp_path):
    root = generate_dataset(tmp_path / "jpg", sequences=1, frames=1, size=(48, 64), image_ext=".jpg").root
    image = Image.open(root / "Images/Video_000/v000_0000.jpg")
    assert (image.format, image.size) == ("JPEG", (64, 48))
    assert (root / "Labels/Video_000/v000_0000.png").is_file()


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", "dist_seg.synth", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def test_cli_writes_dataset_and_prints_summary(tmp_path):
    out = tmp_path / "cli"
    result = _run_cli(str(out), "--sequences", "2", "--frames", "2", "--size", "48x64", "--seed", "5",
                      "--mask-format", "index")
    assert result.returncode == 0, result.stderr
    assert "2 sequence(s) x 2 frame(s)" in result.stdout and "48x64" in result.stdout and "road" in result.stdout
    label = Image.open(out / "Labels/Video_001/v001_0001.png")
    assert (label.mode, label.size) == ("L", (64, 48))
    assert (out / "Images/Video_001/v001_0001.png").is_file()


@pytest.mark.parametrize("size, message", [("48by64", "HEIGHTxWIDTH"), ("8x8", "at least 16")])
def test_cli_rejects_bad_size(tmp_path, size, message):
    result = _run_cli(str(tmp_path / "cli"), "--size", size)
    assert result.returncode == 2
    assert "--size" in result.stderr and message in result.stderr
    assert not (tmp_path / "cli").exists()


def _pixel_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.png")):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(np.asarray(Image.open(path)).tobytes())
    return digest.hexdigest()


def test_pixels_are_those_the_generator_has_always_drawn(tmp_path):
    # Recorded from the generator before it moved into the dist_seg.synth package: the same
    # seed keeps giving the same dataset (pixels, so a different zlib cannot break it).
    generate_dataset(tmp_path / "d", sequences=2, frames=3, size=(64, 96), seed=5)
    assert _pixel_digest(tmp_path / "d") == "4aaa76c1349934c23a0464d6c2b48065253333118f8d35ff2c8c5974c49924a9"


def test_the_dist_seg_subcommand_and_the_module_write_the_same_bytes(tmp_path):
    args = ["--sequences", "1", "--frames", "2", "--size", "32x48", "--seed", "3"]
    assert _run_cli(str(tmp_path / "a"), *args).returncode == 0
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    sub = subprocess.run([sys.executable, "-m", "dist_seg.cli", "synth", str(tmp_path / "b"), *args], cwd=REPO,
                         env=env, capture_output=True, text=True, timeout=120)
    assert sub.returncode == 0, sub.stderr
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) == 4
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
