"""Dataset checks: every problem of a dataset in one pass, each with the file and the fix.

Problems are collected, never raised one at a time: :func:`check_dataset` returns a
:class:`DatasetReport` listing all of them. Frames are judged by :mod:`.decode`, the same
code the cache builder uses, so a dataset that checks clean also prepares clean.
"""

from __future__ import annotations

import difflib
import functools
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from ..config import DatasetConfig
from ..config.classes import IGNORE_INDEX
from ..errors import DataError
from ..parallel import map_in_pool, usable_cores
from .decode import FrameCheck, LabelSpec, check_frame, load_mask
from .discovery import IMAGE_SUFFIXES, DatasetListing, Frame, discover_all
from .problems import Problem

# How many examples a grouped problem names, and how many problems of one kind a report
# prints before summarising the rest: enough to locate the cause, short enough to read.
MAX_EXAMPLES = 3
MAX_PER_KIND = 10


@dataclass
class DatasetReport:
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
        sizes = ", ".join(f"{h}x{w} ({n} frames)" for (h, w), n in sorted(self.image_sizes.items()))
        return (f"{roots}: {self.sequences} sequences, {self.frames} frames"
                + (f"; image sizes (HxW) {sizes}" if sizes else "")
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
            raise DataError(DatasetReport(self.roots, self.sequences, self.frames, self.errors,
                                             self.image_sizes).format())


def _examples(paths: Iterable[Path]) -> str:
    paths = list(paths)
    shown = ", ".join(p.name for p in paths[:MAX_EXAMPLES])
    return shown + (", ..." if len(paths) > MAX_EXAMPLES else "")


def listing_problems(listing: DatasetListing, ds: DatasetConfig) -> list[Problem]:
    """Problems visible from file names alone: missing folders, unpaired files, empty sequences."""
    problems: list[Problem] = []
    if not listing.image_dir_exists:
        problems.append(Problem("missing-folder", listing.image_dir, "image folder does not exist",
                                f"frames must be at <root>/{ds.images}/<sequence>/*.png: check {listing.root_key} "
                                f"({listing.root}) and dataset.images ({ds.images!r})"))
    if not listing.label_dir_exists:
        problems.append(Problem("missing-folder", listing.label_dir, "label folder does not exist",
                                f"masks must be at <root>/{ds.labels}/<sequence>/<frame>.png: check "
                                f"{listing.root_key} ({listing.root}) and dataset.labels ({ds.labels!r})"))
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
                                    f"add frames ({', '.join('*' + s for s in IMAGE_SUFFIXES)}), "
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
                                    f"several images or masks share a name ({_examples(seq.ambiguous_images)})",
                                    "keep one file per frame name (e.g. delete the .jpg copies, or the mask "
                                    "whose suffix differs only in case)"))
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


def split_problems(listing: DatasetListing, ds: DatasetConfig) -> list[Problem]:
    """Names in ``dataset.split.val`` / ``test`` that are not sequences of the (filtered) main root."""
    names = listing.sequence_names
    problems = []
    for key, wanted in (("val", ds.split.val), ("test", ds.split.test)):
        for name in wanted or ():
            if name not in names:
                close = difflib.get_close_matches(name, names, n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                problems.append(Problem("unknown-split-sequence", listing.image_dir,
                                        f"dataset.split.{key} names {name!r}, which is not a sequence here "
                                        "(after dataset.include / exclude)",
                                        f"{hint}choose from {', '.join(names) or '(no sequences)'}"))
    return problems


def default_classes_warning(ds: DatasetConfig) -> Problem | None:
    """A warning when index masks are read with DAVID's class list: likely a forgotten dataset.classes."""
    if ds.mask_format != "index" or not ds.uses_default_classes:
        return None
    return Problem("default-classes", Path(ds.root),
                   "index masks are read with the default DAVID class list (13 classes, id 0 = traffic_sign, "
                   "..., 12 = void): if the masks come from another dataset its ids get DAVID's names",
                   "set dataset.classes to this dataset's class list (a list or a YAML file); keep the "
                   "default only if the ids really are DAVID's", "warning")


def unannotated_warning(checks: Sequence[FrameCheck], spec: LabelSpec) -> Problem | None:
    """A warning when most index masks are mostly 255: a binary 0/255 mask means a class there, not "ignore".

    Index masks use 255 for "not annotated", so such a dataset would train on almost nothing
    without any error.
    """
    shares = [c.unannotated for c in checks if c.unannotated is not None]
    mostly = [c.frame.mask for c in checks if c.unannotated is not None and c.unannotated > 0.5]
    if spec.mask_format != "index" or not shares or len(mostly) * 2 <= len(shares):
        return None
    return Problem("mostly-unannotated", mostly[0],
                   f"{len(mostly)} of {len(shares)} masks have more than half their pixels {IGNORE_INDEX}, which "
                   f"index masks use for 'not annotated' ({_examples(mostly)}): those pixels are not trained on",
                   f"if {IGNORE_INDEX} marks a class (white in a black-and-white mask), save the masks with that "
                   "class's id, or keep them as they are and set dataset.mask_format: rgb with the colours "
                   "[0, 0, 0] and [255, 255, 255] in dataset.classes", "warning")


def report_for(listings: list[DatasetListing], ds: DatasetConfig, checks: Sequence[FrameCheck]) -> DatasetReport:
    """Combine file-name problems, per-frame findings and class-list warnings into one report."""
    spec = LabelSpec.from_config(ds)
    problems = [p for listing in listings for p in listing_problems(listing, ds)]
    problems += [p for check in checks for p in check.problems]
    problems += unknown_value_problems(checks, spec)
    problems += [w for w in (unannotated_warning(checks, spec), default_classes_warning(ds)) if w is not None]
    sizes: dict[tuple[int, int], int] = defaultdict(int)
    for check in checks:
        if check.size is not None:
            sizes[check.size] += 1
    return DatasetReport([listing.root for listing in listings], sum(len(listing.sequences) for listing in listings),
                         sum(len(listing.frames) for listing in listings), problems, dict(sizes))


def check_frames(listings: Sequence[DatasetListing], ds: DatasetConfig, *, progress: bool) -> list[FrameCheck]:
    """Decode every frame of ``listings`` at full size, in a process pool, and return what was found."""
    frames = [f for listing in listings for f in listing.frames]
    return list(map_in_pool(functools.partial(check_frame, spec=LabelSpec.from_config(ds)), frames,
                            workers=ds.cache_workers or usable_cores(), desc="checking frames", progress=progress))


def check_dataset(ds: DatasetConfig, *, progress: bool = True) -> DatasetReport:
    """Check every file of the dataset (and test root): names, readability, sizes, mask values,
    and the split names the config gives."""
    listings = discover_all(ds)
    report = report_for(listings, ds, check_frames(listings, ds, progress=progress))
    report.problems += split_problems(listings[0], ds)
    return report


def check_training_labels(frames: Sequence[Frame], ds: DatasetConfig, counts: np.ndarray | None = None) -> None:
    """Refuse training masks in which every pixel is void (``dataset.void_class``) or ignored: nothing to learn.

    Such a run would train on a loss of zero (or NaN) for its whole length. ``counts`` (class
    pixel counts from fresh cache manifests) decide without reading a file. Otherwise masks
    are decoded in an evenly spread order until a pixel of a learnable class appears, so a
    usual dataset costs one decode; only one that really is all void is read in full, and
    then refused before any cache is built. An unreadable mask is skipped here (the frame
    checks report it).
    """
    if not frames:
        return
    unlearnable = np.zeros(256, dtype=bool)
    unlearnable[IGNORE_INDEX] = True
    if ds.void_index is not None:
        unlearnable[ds.void_index] = True
    if counts is not None:
        if counts[~unlearnable[: len(counts)]].sum() > 0:
            return
    else:
        spec = LabelSpec.from_config(ds)
        step = max(1, len(frames) // 16)
        for i in [*range(0, len(frames), step), *(i for i in range(len(frames)) if i % step)]:
            try:
                ids = load_mask(frames[i].mask, spec, None)
            except DataError:
                continue
            if not unlearnable[ids].all():
                return
    void = f"the void class {ds.void_class!r} or " if ds.void_class is not None else ""
    raise DataError(f"every pixel of the {len(frames)} training masks is {void}ignored ({IGNORE_INDEX}): there is "
                    "nothing to learn. Check dataset.mask_format and dataset.classes against the masks (a grey-scale "
                    "index mask read as rgb, or colours that match no class with dataset.unknown_colors: void, "
                    "give exactly this), and dataset.labels")
