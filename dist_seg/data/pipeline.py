"""The two data calls the trainer makes: :func:`prepare` once per node, :func:`load_datasets` on every rank.

``prepare`` discovers the dataset, refuses bad data (one DataError listing every
problem), writes or reuses ``splits.json`` and builds or reuses the caches. It is
idempotent and deterministic, so the local-rank-0 process of every node may call it.
``load_datasets`` is cheap: it reads splits.json and the cache manifests and opens no
image file.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from ..config import Config
from ..errors import DataError
from .cache import (
    SequenceCache,
    dataset_cache_dir,
    ensure_caches,
    fresh_class_pixel_counts,
    load_sequence_cache,
    output_size,
)
from .checks import check_frames, check_training_labels, listing_problems, report_for
from .dataset import CachedDataset, DecodeDataset
from .decode import LabelSpec, load_mask
from .discovery import Frame, discover_all
from .loader import check_training_frames
from .problems import Problem
from .shards import open_streamed, write_shards
from .splits import SPLIT_NAMES, Splits, check_split_names, planned_splits, read_splits, resolve_splits, splits_path

# Masks decoded to estimate class frequencies when there is no cache: evenly spaced over
# the training frames, enough for stable class weights, cheap enough for every rank.
CLASS_COUNT_SAMPLE = 64


@dataclass
class PrepareSummary:
    """What :func:`prepare` did, for the command line and the training log."""

    splits_file: Path
    split_counts: dict[str, tuple[int, int]]  # split -> (sequences, frames)
    cache_dirs: list[Path]
    built: list[str]
    reused: list[str]
    class_names: list[str]
    train_class_pixel_counts: np.ndarray | None  # None without a cache
    ignored_pixels: int
    warnings: list[Problem] = field(default_factory=list)  # already logged by prepare
    seconds: float = 0.0

    def format(self) -> str:
        lines = [f"prepared in {self.seconds:.1f}s; splits in {self.splits_file}"]
        for split in SPLIT_NAMES:
            sequences, frames = self.split_counts[split]
            lines.append(f"  {split:5s}: {sequences} sequences, {frames} frames")
        if self.cache_dirs:
            lines.append(f"  cache: {', '.join(str(d) for d in self.cache_dirs)}")
            lines.append(f"  built {len(self.built)} sequences ({', '.join(self.built) or '-'}), "
                         f"reused {len(self.reused)} ({', '.join(self.reused) or '-'})")
        else:
            lines.append("  cache: off (dataset.use_cache: false); frames are decoded on every access")
        if self.train_class_pixel_counts is not None:
            total = max(int(self.train_class_pixel_counts.sum()), 1)
            fractions = ", ".join(f"{name} {100 * n / total:.1f}%"
                                  for name, n in zip(self.class_names, self.train_class_pixel_counts, strict=False))
            lines.append(f"  class pixel fractions (train): {fractions}")
        if self.ignored_pixels:
            lines.append(f"  {self.ignored_pixels} pixels with unknown mask values are ignored (label 255)")
        return "\n".join(lines)


@dataclass
class DataBundle:
    """The datasets of a run and the statistics the loss needs."""

    train: Dataset
    val: Dataset | None
    test: Dataset | None
    class_names: list[str]
    train_class_pixel_counts: np.ndarray  # [num_classes] int64
    splits: Splits


def _sum_counts(caches: Sequence[SequenceCache], num_classes: int) -> np.ndarray:
    return np.sum([c.class_pixel_counts for c in caches], axis=0, dtype=np.int64) if caches else (
        np.zeros(num_classes, dtype=np.int64))


def prepare(cfg: Config, *, log: Callable[[str], None] = print, progress: bool = True,
            world_size: int = 1, hold: contextlib.ExitStack | None = None) -> PrepareSummary:
    """Discover, validate, split and cache the dataset; raise DataError listing every problem.

    With ``dataset.use_cache`` the frame checks happen while building stale caches
    (one decode per frame); fresh caches are reused without opening any image. Without
    the cache every frame is checked on each call. ``world_size``: the processes that will
    train, each on its own full batches (the training split must give every one a step).
    ``hold``: keep the caches locked against pruning until it closes (see :func:`ensure_caches`).
    """
    start = time.perf_counter()
    ds = cfg.dataset
    listings = discover_all(ds)
    names_ok = not any(listing_problems(listing, ds) for listing in listings)
    # Split settings and a batch larger than the training split must not wait for a cache
    # build (or a decode of every frame) to be reported: both need only the file names.
    check_split_names(listings[0].sequence_names, ds.split, test_from_root=len(listings) > 1)
    splits = None
    if names_ok:
        test_listing = listings[1] if len(listings) > 1 else None
        planned = planned_splits(listings[0], test_listing, cfg, log=lambda _m: None)
        check_training_frames(planned.counts()["train"][1], cfg.training, world_size)
        # Before splits.json and the caches are written: all-void labels end the run here.
        counts = fresh_class_pixel_counts(planned.train, cfg) if ds.use_cache else None
        check_training_labels([f for seq in planned.train for f in seq.frame_records()], ds, counts)
        splits = resolve_splits(listings[0], test_listing, cfg, log=log)
    cache_outcome = None
    if ds.use_cache and names_ok:
        cache_outcome = ensure_caches(listings, cfg, log=log, progress=progress, hold=hold)
        checks = cache_outcome.checks
    else:
        # Bad file layout: check contents too (all problems in one report), but build nothing.
        checks = check_frames(listings, ds, progress=progress)
    report = report_for(listings, ds, checks)
    report.raise_for_errors()
    for warning in report.warnings:
        log(f"WARNING: {warning}")
    assert splits is not None  # a problem in the file names is an error: the report has raised
    summary = PrepareSummary(splits_path(cfg), splits.counts(), [], [], [], ds.class_names, None, 0,
                             report.warnings)
    if cache_outcome is not None:
        by_dir = {c.directory: c for c in cache_outcome.caches}
        train_caches = [by_dir[dataset_cache_dir(seq.root, cfg) / seq.name] for seq in splits.train]
        summary.cache_dirs, summary.built, summary.reused = (cache_outcome.directories, cache_outcome.built,
                                                             cache_outcome.reused)
        summary.train_class_pixel_counts = _sum_counts(train_caches, ds.num_classes)
        summary.ignored_pixels = sum(c.ignored_pixels for c in cache_outcome.caches)
    summary.seconds = time.perf_counter() - start
    return summary


def estimate_class_pixel_counts(frames: Sequence[Frame], spec: LabelSpec, size: tuple[int, int]) -> np.ndarray:
    """Class pixel counts from ``CLASS_COUNT_SAMPLE`` evenly spaced masks (no cache to read them from)."""
    step = max(1, len(frames) // CLASS_COUNT_SAMPLE)
    counts = np.zeros(256, dtype=np.int64)
    for frame in list(frames)[::step][:CLASS_COUNT_SAMPLE]:
        counts += np.bincount(load_mask(frame.mask, spec, size).ravel(), minlength=256)
    return counts[: len(spec.classes)]


def write_split_shards(cfg: Config, out: Path) -> dict:
    """Write the caches of every split's sequences (after :func:`prepare`) as streaming shards into ``out``."""
    splits = read_splits(cfg)
    caches = [load_sequence_cache(seq.root, seq.name, [str(f.image) for f in seq.frame_records()], cfg)
              for split in SPLIT_NAMES for seq in splits.get(split) or ()]
    return write_shards(caches, out)


def load_datasets(cfg: Config) -> DataBundle:
    """Datasets for the splits written by :func:`prepare`; DataError with the fix if it has not run."""
    ds = cfg.dataset
    splits = read_splits(cfg)
    size = output_size(cfg)
    spec = LabelSpec.from_config(ds)
    train_caches: list[SequenceCache] = []

    def build(split: str) -> Dataset | None:
        sequences = splits.get(split)
        if not sequences:
            return None
        if not ds.use_cache:
            return DecodeDataset([f for seq in sequences for f in seq.frame_records()], spec, size)
        caches = [load_sequence_cache(seq.root, seq.name, [str(f.image) for f in seq.frame_records()], cfg)
                  for seq in sequences]
        if split == "train":
            train_caches.extend(caches)
            if ds.remote is not None:
                return open_streamed(ds.remote, ds.local_cache, ds.local_cache_limit, caches)
        return CachedDataset(caches)

    datasets = {split: build(split) for split in SPLIT_NAMES}
    if datasets["train"] is None:
        raise DataError(f"{splits_path(cfg)} has no training sequences: run python -m dist_seg.prepare CONFIG")
    if ds.use_cache:
        counts = _sum_counts(train_caches, ds.num_classes)
    else:
        counts = estimate_class_pixel_counts([f for seq in splits.train for f in seq.frame_records()], spec, size)
    return DataBundle(datasets["train"], datasets["val"], datasets["test"], ds.class_names, counts, splits)
