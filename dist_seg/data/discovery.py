"""Find the sequences and (image, mask) frame pairs of a DAVID-style dataset root.

Layout: ``<root>/<images>/<sequence>/<stem>.{png,jpg,jpeg}`` paired with
``<root>/<labels>/<sequence>/<stem>.png``; suffixes match in any case (``.PNG``), and the
file names found here are the ones every later step opens. Discovery only lists and
pairs files (no decoding); it records what it could not pair so that the dataset checks
can report it, and it never decides whether that is fatal.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path

from ..config import DatasetConfig

# The one list of frame file types (lower case; files match in any case).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
MASK_SUFFIX = ".png"


@dataclass(frozen=True)
class Frame:
    """One video frame: its image and its label mask."""

    sequence: str
    image: Path
    mask: Path

    @property
    def stem(self) -> str:
        return self.image.stem


@dataclass(frozen=True)
class SequenceListing:
    """The paired frames of one sequence folder, plus whatever could not be paired."""

    name: str
    image_dir: Path
    label_dir: Path
    has_label_dir: bool
    frames: tuple[Frame, ...]
    images_without_mask: tuple[Path, ...]
    masks_without_image: tuple[Path, ...]
    # Two images with the same stem (e.g. a.png and a.jpg) cannot both pair with a.png;
    # two masks of one stem (a.png and a.PNG on a case-sensitive disk) are listed here too.
    ambiguous_images: tuple[Path, ...]


@dataclass(frozen=True)
class DatasetListing:
    """Everything discovered under one dataset root, after ``include`` / ``exclude``."""

    root: Path
    image_dir: Path
    label_dir: Path
    image_dir_exists: bool
    label_dir_exists: bool
    sequences: tuple[SequenceListing, ...]
    # Label folders that have no image folder of the same name.
    label_only_sequences: tuple[Path, ...]
    # Names in dataset.include that are not sequence folders, each with its closest match or None.
    unknown_includes: tuple[tuple[str, str | None], ...]
    # The setting that named ``root`` (dataset.root, dataset.test_root, an option), for messages.
    root_key: str = "dataset.root"

    @property
    def frames(self) -> list[Frame]:
        return [f for s in self.sequences for f in s.frames]

    @property
    def sequence_names(self) -> list[str]:
        return [s.name for s in self.sequences]


def list_files(directory: Path, suffixes: tuple[str, ...]) -> list[Path]:
    """Files in ``directory`` with one of ``suffixes`` (any case), sorted."""
    # Hidden files (".DS_Store", macOS "._x.png" forks) are never data.
    return sorted(p for p in directory.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in suffixes)


def _subdirs(directory: Path) -> list[str]:
    if not directory.is_dir():
        return []
    return sorted(p.name for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))


def list_sequence(name: str, image_dir: Path, label_dir: Path) -> SequenceListing:
    """Pair the images of one sequence folder with the masks of the same stem."""
    images_by_stem: dict[str, list[Path]] = {}
    for path in list_files(image_dir, IMAGE_SUFFIXES):
        images_by_stem.setdefault(path.stem, []).append(path)
    has_label_dir = label_dir.is_dir()
    masks_by_stem: dict[str, list[Path]] = {}
    for path in list_files(label_dir, (MASK_SUFFIX,)) if has_label_dir else []:
        masks_by_stem.setdefault(path.stem, []).append(path)
    masks = {stem: paths[0] for stem, paths in masks_by_stem.items()}

    frames, without_mask, ambiguous = [], [], []
    for stem in sorted(images_by_stem):
        candidates = images_by_stem[stem]
        if len(candidates) > 1 or len(masks_by_stem.get(stem, ())) > 1:
            ambiguous.extend(candidates + (masks_by_stem[stem] if len(masks_by_stem.get(stem, ())) > 1 else []))
        elif stem in masks:
            frames.append(Frame(name, candidates[0], masks[stem]))
        else:
            without_mask.append(candidates[0])
    without_image = [masks[stem] for stem in sorted(masks) if stem not in images_by_stem]
    return SequenceListing(name, image_dir, label_dir, has_label_dir, tuple(frames),
                           tuple(without_mask), tuple(without_image), tuple(ambiguous))


def discover(root: Path, ds: DatasetConfig, *, apply_filters: bool = True,
             root_key: str = "dataset.root") -> DatasetListing:
    """List and pair every frame under ``root`` in sorted (deterministic) order.

    With ``apply_filters`` the sequences are restricted by ``dataset.include`` and
    ``dataset.exclude``; a separate ``test_root`` is discovered without them. ``root_key``
    names the setting that gave ``root``, for the problems found.
    """
    root = Path(root)
    image_dir, label_dir = root / ds.images, root / ds.labels
    names = _subdirs(image_dir)

    unknown: list[tuple[str, str | None]] = []
    selected = names
    label_only = [n for n in _subdirs(label_dir) if n not in set(names)]
    if apply_filters:
        if ds.include is not None:
            for wanted in ds.include:
                if wanted not in names:
                    close = difflib.get_close_matches(wanted, names, n=1)
                    unknown.append((wanted, close[0] if close else None))
            selected = [n for n in selected if n in set(ds.include)]
            # An included name without an image folder is already reported as unknown.
            label_only = []
        selected = [n for n in selected if n not in set(ds.exclude)]
        label_only = [n for n in label_only if n not in set(ds.exclude)]

    sequences = tuple(list_sequence(n, image_dir / n, label_dir / n) for n in selected)
    return DatasetListing(root, image_dir, label_dir, image_dir.is_dir(), label_dir.is_dir(),
                          sequences, tuple(label_dir / n for n in label_only), tuple(unknown), root_key)


def discover_all(ds: DatasetConfig) -> list[DatasetListing]:
    """The main root (filtered by include/exclude) and, if set, the test root (unfiltered)."""
    listings = [discover(ds.root, ds)]
    if ds.test_root is not None:
        listings.append(discover(ds.test_root, ds, apply_filters=False, root_key="dataset.test_root"))
    return listings
