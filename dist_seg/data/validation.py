"""Decode and check frames, and report every problem of a dataset in one pass.

This is the one place where image and mask files are decoded: the validator, the cache
builder and the decode-on-the-fly dataset all read frames through the functions here,
so a frame is judged (and converted to class ids) the same way everywhere.

Problems are collected, never raised one at a time: :func:`validate_dataset` returns a
:class:`ValidationReport` listing all of them, each with the file and the fix.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Literal, Sequence, TypeVar

import numpy as np
from PIL import Image
from tqdm import tqdm

from ..config import IGNORE_INDEX, ClassSpec, Config, DatasetConfig
from ..errors import DataError
from .discovery import DatasetListing, Frame, discover
from .palette import Palette

# How many examples a grouped problem names, and how many problems of one kind a report
# prints before summarising the rest: enough to locate the cause, short enough to read.
MAX_EXAMPLES = 3
MAX_PER_KIND = 10

_READ_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)
# Single-channel modes whose pixel values are the stored numbers (class ids in index masks).
_GREY_MODES = ("L", "I", "I;16", "I;16B", "I;16L")

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the data: where, what, and how to fix it."""

    kind: str
    path: Path
    message: str
    fix: str
    severity: Literal["error", "warning"] = "error"

    def __str__(self) -> str:
        return f"{self.path}: {self.message}\n    fix: {self.fix}"


@dataclass(frozen=True)
class LabelSpec:
    """How masks are read: the class colours, the mask format, and what unknown values become."""

    classes: tuple[ClassSpec, ...]
    mask_format: Literal["rgb", "index"]
    unknown_colors: Literal["error", "void"]

    @classmethod
    def from_config(cls, ds: DatasetConfig) -> "LabelSpec":
        return cls(tuple(ds.classes), ds.mask_format, ds.unknown_colors)

    @property
    def palette(self) -> Palette:
        return _palette(self.classes)


@functools.lru_cache(maxsize=4)
def _palette(classes: tuple[ClassSpec, ...]) -> Palette:
    # One 16 MiB lookup table per process and class list, not one per call or per pickle.
    return Palette(classes)


@dataclass
class FrameCheck:
    """What checking one frame found. ``unknown`` maps stray mask values to pixel counts."""

    frame: Frame
    problems: list[Problem] = field(default_factory=list)
    unknown: dict[tuple[int, int, int] | int, int] = field(default_factory=dict)
    size: tuple[int, int] | None = None  # (H, W) of the image when readable


@dataclass
class DecodedFrame:
    """A checked frame with its arrays at the requested size (None where it is unusable)."""

    check: FrameCheck
    image: np.ndarray | None  # [3, H, W] uint8
    mask: np.ndarray | None  # [H, W] uint8 class ids, IGNORE_INDEX = ignore


@dataclass
class ValidationReport:
    """All problems found in a dataset, with enough counts for a summary line."""

    roots: list[Path]
    sequences: int
    frames: int
    problems: list[Problem]
    image_sizes: dict[tuple[int, int], int] = field(default_factory=dict)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    def summary(self) -> str:
        roots = ", ".join(str(r) for r in self.roots)
        sizes = ", ".join(f"{w}x{h} ({n} frames)" for (h, w), n in sorted(self.image_sizes.items()))
        return (f"{roots}: {self.sequences} sequences, {self.frames} frames"
                + (f"; image sizes {sizes}" if sizes else "")
                + f"; {len(self.errors)} errors, {len(self.warnings)} warnings")

    def format(self) -> str:
        """Every problem, grouped by kind; long groups are cut to ``MAX_PER_KIND`` plus a count."""
        if not self.problems:
            return f"dataset OK: {self.summary()}"
        by_kind: dict[str, list[Problem]] = defaultdict(list)
        for problem in self.problems:
            by_kind[problem.kind].append(problem)
        lines = [f"dataset problems: {self.summary()}"]
        for kind, problems in by_kind.items():
            for problem in problems[:MAX_PER_KIND]:
                lines.append(f"  [{problem.severity}] {problem}")
            if len(problems) > MAX_PER_KIND:
                lines.append(f"  ... and {len(problems) - MAX_PER_KIND} more {kind} problems like these")
        return "\n".join(lines)

    def raise_for_errors(self) -> None:
        """Raise one :class:`DataError` listing every error (warnings alone pass)."""
        if self.errors:
            raise DataError(ValidationReport(self.roots, self.sequences, self.frames, self.errors,
                                             self.image_sizes).format())


# ----------------------------------------------------------------------------- decoding


def _open_verified(path: Path) -> tuple[Image.Image | None, str | None]:
    """Fully read an image file; ``verify`` catches bad checksums, ``load`` truncation."""
    try:
        with Image.open(path) as probe:
            probe.verify()
        with Image.open(path) as image:
            image.load()
        return image, None
    except _READ_ERRORS as exc:
        return None, f"{type(exc).__name__}: {exc}"


def _rgb_array(image: Image.Image) -> np.ndarray:
    return np.asarray(image if image.mode == "RGB" else image.convert("RGB"))


def resize_image(rgb: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    """``[H, W, 3]`` -> ``[3, h, w]`` uint8 at ``size`` = (h, w); bilinear (antialiased when shrinking)."""
    if size is not None and rgb.shape[:2] != tuple(size):
        rgb = np.asarray(Image.fromarray(rgb).resize((size[1], size[0]), Image.BILINEAR))
    return np.ascontiguousarray(rgb.transpose(2, 0, 1))


def resize_mask(ids: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    """``[H, W]`` class ids at ``size`` = (h, w); nearest neighbour so no id is invented."""
    if size is not None and ids.shape != tuple(size):
        ids = np.asarray(Image.fromarray(ids).resize((size[1], size[0]), Image.NEAREST))
    # Writable, because torch.from_numpy warns on (and must not write through) read-only arrays.
    return np.require(ids, np.uint8, ["C_CONTIGUOUS", "WRITEABLE"])


def mask_to_ids(mask: Image.Image, spec: LabelSpec
                ) -> tuple[np.ndarray | None, dict[tuple[int, int, int] | int, int], str | None]:
    """Convert a decoded mask to uint8 class ids.

    Returns ``(ids, unknown, error)``: ``unknown`` maps values outside the class list to
    pixel counts (they are IGNORE_INDEX in ``ids``); ``error`` explains a mask that
    cannot be read in this format at all (``ids`` is then None).
    """
    if spec.mask_format == "rgb":
        if mask.mode in _GREY_MODES:
            return None, {}, (f"is a single-channel ({mask.mode}) mask but dataset.mask_format is rgb; "
                              "if it holds class ids set dataset.mask_format: index")
        rgb = _rgb_array(mask)
        ids = spec.palette.rgb_to_ids(rgb)
        unknown = spec.palette.unknown_colors(rgb) if (ids == IGNORE_INDEX).any() else {}
        return ids, unknown, None
    if mask.mode not in _GREY_MODES and mask.mode != "P":
        return None, {}, (f"is a {mask.mode} colour mask but dataset.mask_format is index; "
                          "set dataset.mask_format: rgb or save masks as single-channel class ids")
    values = np.asarray(mask)  # for palette ("P") PNGs these are the stored indices
    # IGNORE_INDEX is a valid label in index masks: it means "not annotated".
    bad = (values >= len(spec.classes)) & (values != IGNORE_INDEX)
    if not bad.any():
        return values.astype(np.uint8, copy=False), {}, None
    stray, counts = np.unique(values[bad], return_counts=True)
    ids = np.where(bad, IGNORE_INDEX, values).astype(np.uint8)
    return ids, {int(v): int(n) for v, n in zip(stray, counts)}, None


def decode_frame(frame: Frame, spec: LabelSpec, size: tuple[int, int] | None, with_image: bool) -> DecodedFrame:
    """Read, check and convert one frame; arrays are None when the frame has an error.

    Unknown mask values are recorded in ``check.unknown``; with ``unknown_colors: error``
    they make the frame unusable, with ``void`` they are served as IGNORE_INDEX.
    """
    check = FrameCheck(frame)
    image, image_error = _open_verified(frame.image)
    mask, mask_error = _open_verified(frame.mask)
    if image_error:
        check.problems.append(Problem("unreadable", frame.image, f"cannot read image ({image_error})",
                                      "re-export or replace the file (a truncated copy is the usual cause), "
                                      "or delete it together with its mask"))
    if mask_error:
        check.problems.append(Problem("unreadable", frame.mask, f"cannot read mask ({mask_error})",
                                      "re-export or replace the mask, or delete it together with its frame"))
    if image is None or mask is None:
        return DecodedFrame(check, None, None)
    check.size = (image.height, image.width)
    if image.size != mask.size:
        check.problems.append(Problem(
            "size-mismatch", frame.mask,
            f"mask is {mask.width}x{mask.height} but its image {frame.image.name} is {image.width}x{image.height}",
            "masks must have exactly the size of their frame: regenerate or resize the mask (nearest neighbour)"))
        return DecodedFrame(check, None, None)
    ids, check.unknown, format_error = mask_to_ids(mask, spec)
    if format_error:
        check.problems.append(Problem("mask-format", frame.mask, f"mask {format_error}",
                                      "make all masks use one format matching dataset.mask_format"))
    if ids is None or (check.unknown and spec.unknown_colors == "error"):
        return DecodedFrame(check, None, None)
    image_array = resize_image(_rgb_array(image), size) if with_image else None
    return DecodedFrame(check, image_array, resize_mask(ids, size))


def check_frame(frame: Frame, spec: LabelSpec) -> FrameCheck:
    """Decode one frame at full size and return only what was found (no arrays)."""
    return decode_frame(frame, spec, None, with_image=False).check


def load_image(path: Path | str, size: tuple[int, int] | None) -> np.ndarray:
    """Decode one image to ``[3, H, W]`` uint8 at ``size``; DataError if it cannot be read."""
    try:
        with Image.open(path) as image:
            rgb = _rgb_array(image)
    except _READ_ERRORS as exc:
        raise DataError(f"{path}: cannot read image ({exc}); run python -m dist_seg.validate CONFIG "
                        "to list every unreadable file") from exc
    return resize_image(rgb, size)


def load_mask(path: Path | str, spec: LabelSpec, size: tuple[int, int] | None) -> np.ndarray:
    """Decode one mask to ``[H, W]`` uint8 class ids at ``size``; DataError if unusable."""
    try:
        with Image.open(path) as mask:
            mask.load()
    except _READ_ERRORS as exc:
        raise DataError(f"{path}: cannot read mask ({exc}); run python -m dist_seg.validate CONFIG "
                        "to list every unreadable file") from exc
    ids, unknown, error = mask_to_ids(mask, spec)
    if error:
        raise DataError(f"{path}: mask {error}")
    if unknown and spec.unknown_colors == "error":
        raise DataError(f"{path}: mask values not in dataset.classes: {sorted(unknown)}; "
                        "run python -m dist_seg.validate CONFIG for the full list, or set dataset.unknown_colors: void")
    return resize_mask(ids, size)


# ----------------------------------------------------------------------------- parallel map


def worker_count(ds: DatasetConfig) -> int:
    """Processes for decoding: ``dataset.cache_workers`` or every core this process may use."""
    if ds.cache_workers:
        return ds.cache_workers
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def map_in_pool(fn: Callable[[T], R], items: Sequence[T], *, workers: int, desc: str,
                progress: bool) -> Iterator[R]:
    """``fn`` over ``items`` in a process pool, results in input order, with a progress bar.

    Runs inline when one process suffices, so small jobs pay no pool start-up.
    """
    bar = tqdm(total=len(items), desc=desc, unit="frame", disable=not progress, dynamic_ncols=True)
    workers = min(workers, len(items))
    try:
        if workers <= 1:
            for item in items:
                yield fn(item)
                bar.update()
            return
        # Small chunks keep the bar moving and the cores balanced; large ones cut IPC.
        chunksize = max(1, min(16, len(items) // (workers * 4)))
        with multiprocessing.get_context().Pool(workers) as pool:
            for result in pool.imap(fn, items, chunksize=chunksize):
                yield result
                bar.update()
    finally:
        bar.close()


# ----------------------------------------------------------------------------- problems


def _examples(paths: Iterable[Path]) -> str:
    paths = list(paths)
    shown = ", ".join(p.name for p in paths[:MAX_EXAMPLES])
    return shown + (", ..." if len(paths) > MAX_EXAMPLES else "")


def listing_problems(listing: DatasetListing, ds: DatasetConfig) -> list[Problem]:
    """Problems visible from file names alone: missing folders, unpaired files, empty sequences."""
    problems: list[Problem] = []
    if not listing.image_dir_exists:
        problems.append(Problem("missing-folder", listing.image_dir, "image folder does not exist",
                                f"frames must be at <root>/{ds.images}/<sequence>/*.png: check dataset.root "
                                f"({listing.root}) and dataset.images ({ds.images!r})"))
    if not listing.label_dir_exists:
        problems.append(Problem("missing-folder", listing.label_dir, "label folder does not exist",
                                f"masks must be at <root>/{ds.labels}/<sequence>/<frame>.png: check dataset.root "
                                f"({listing.root}) and dataset.labels ({ds.labels!r})"))
    for name, close in listing.unknown_includes:
        hint = f"did you mean {close!r}? " if close else ""
        problems.append(Problem("unknown-sequence", listing.image_dir,
                                f"dataset.include names {name!r}, which is not a sequence folder here",
                                f"{hint}fix or remove the name in dataset.include"))
    if listing.image_dir_exists and not listing.sequences and not listing.unknown_includes:
        problems.append(Problem("no-sequences", listing.image_dir, "no sequence folders to use",
                                f"put frames in sequence folders (<root>/{ds.images}/Video_000/*.png); "
                                "check dataset.include / dataset.exclude"))
    for path in listing.label_only_sequences:
        problems.append(Problem("label-only-sequence", path, "label folder has no image folder of the same name",
                                f"add {listing.image_dir / path.name} or remove the label folder"))
    if not listing.label_dir_exists:
        return problems  # every sequence would repeat the missing label folder
    for seq in listing.sequences:
        if not (seq.frames or seq.images_without_mask or seq.ambiguous_images):
            problems.append(Problem("empty-sequence", seq.image_dir, "sequence folder has no images",
                                    f"add frames ({', '.join('*' + s for s in ('.png', '.jpg', '.jpeg'))}), "
                                    "delete the folder, or list it in dataset.exclude"))
            continue
        if not seq.has_label_dir:
            problems.append(Problem("missing-label-folder", seq.label_dir,
                                    f"sequence {seq.name} has no label folder",
                                    f"create {seq.label_dir} with one <frame>.png mask per frame, "
                                    "or list the sequence in dataset.exclude"))
            continue
        if seq.images_without_mask:
            n = len(seq.images_without_mask)
            problems.append(Problem("frame-without-mask", seq.label_dir,
                                    f"{n} frame(s) of {seq.name} have no mask ({_examples(seq.images_without_mask)})",
                                    f"add <frame>.png masks to {seq.label_dir} or delete those frames"))
        if seq.masks_without_image:
            n = len(seq.masks_without_image)
            problems.append(Problem("mask-without-frame", seq.image_dir,
                                    f"{n} mask(s) of {seq.name} have no frame ({_examples(seq.masks_without_image)})",
                                    f"add the frames to {seq.image_dir} or delete those masks"))
        if seq.ambiguous_images:
            problems.append(Problem("ambiguous-frame", seq.image_dir,
                                    f"several images share a name ({_examples(seq.ambiguous_images)})",
                                    "keep one file per frame name (e.g. delete the .jpg copies)"))
    return problems


def _describe_value(value: tuple[int, int, int] | int) -> str:
    return f"colour {list(value)}" if isinstance(value, tuple) else f"class id {value}"


def unknown_value_problems(checks: Iterable[FrameCheck], spec: LabelSpec) -> list[Problem]:
    """One problem per stray mask colour / id (most pixels first), naming the masks it is in."""
    pixels: dict[tuple[int, int, int] | int, int] = defaultdict(int)
    files: dict[tuple[int, int, int] | int, list[Path]] = defaultdict(list)
    for check in checks:
        for value, count in check.unknown.items():
            pixels[value] += count
            files[value].append(check.frame.mask)
    if not pixels:
        return []
    severity: Literal["error", "warning"] = "warning" if spec.unknown_colors == "void" else "error"
    if spec.mask_format == "rgb":
        what = "is not in the palette (dataset.classes)"
        fix = ("add the colour to dataset.classes, repaint those pixels, or set dataset.unknown_colors: void "
               f"to ignore them (label {IGNORE_INDEX})")
        if len(pixels) > 20:
            fix += "; this many colours usually means masks saved with antialiasing or lossy compression"
    else:
        what = f"is outside 0..{len(spec.classes) - 1} (and {IGNORE_INDEX} = ignore)"
        fix = ("extend dataset.classes, fix the masks, or set dataset.unknown_colors: void "
               f"to ignore those pixels (label {IGNORE_INDEX})")
    if severity == "warning":
        fix = f"none needed: these pixels are ignored (label {IGNORE_INDEX}) because dataset.unknown_colors is void"
    ordered = sorted(pixels, key=lambda v: (-pixels[v], str(v)))
    return [Problem("unknown-colour", files[v][0],
                    f"{_describe_value(v)} {what}: {pixels[v]} pixels in {len(files[v])} mask(s) "
                    f"({_examples(files[v])})", fix, severity)
            for v in ordered]


# ----------------------------------------------------------------------------- whole dataset


def discover_all(cfg: Config) -> list[DatasetListing]:
    """The main root (filtered by include/exclude) and, if set, the test root (unfiltered)."""
    ds = cfg.dataset
    listings = [discover(ds.root, ds)]
    if ds.test_root is not None:
        listings.append(discover(ds.test_root, ds, apply_filters=False))
    return listings


def report_for(listings: list[DatasetListing], ds: DatasetConfig, checks: Sequence[FrameCheck]) -> ValidationReport:
    """Combine file-name problems and per-frame findings into one report."""
    spec = LabelSpec.from_config(ds)
    problems = [p for listing in listings for p in listing_problems(listing, ds)]
    problems += [p for check in checks for p in check.problems]
    problems += unknown_value_problems(checks, spec)
    sizes: dict[tuple[int, int], int] = defaultdict(int)
    for check in checks:
        if check.size is not None:
            sizes[check.size] += 1
    return ValidationReport([l.root for l in listings], sum(len(l.sequences) for l in listings),
                            sum(len(l.frames) for l in listings), problems, dict(sizes))


def validate_dataset(cfg: Config, *, progress: bool = True) -> ValidationReport:
    """Check every file of the dataset (and test root): names, readability, sizes, mask values."""
    listings = discover_all(cfg)
    frames = [f for listing in listings for f in listing.frames]
    spec = LabelSpec.from_config(cfg.dataset)
    checks = list(map_in_pool(functools.partial(check_frame, spec=spec), frames,
                              workers=worker_count(cfg.dataset), desc="checking frames", progress=progress))
    return report_for(listings, cfg.dataset, checks)
