"""Class-id masks at each frame's own resolution, decoded once per sequence and cached.

Native-resolution evaluation scores predictions against the masks exactly as annotated.
Decoding a PNG and colour-matching it costs milliseconds per frame, so the masks are
decoded once into one flat uint8 array per sequence (frames may differ in size) and
reused while the frames are unchanged. Freshness is decided like the training caches
(:mod:`dist_seg.data.cache`): a fingerprint of file names, sizes, mtimes and the label
settings; no PNG is opened to find a cache fresh. Layout::

    <cache root>/<root name>-<hash of resolved root>/native/<sequence>/manifest.json
    <cache root>/<root name>-<hash of resolved root>/native/<sequence>/masks-<fingerprint>.npy

Frames are decoded with the same checks as ``validate`` and the cache build; a frame that
is unreadable, whose mask does not match its image size, or that holds unknown colours
(with ``dataset.unknown_colors: error``) stops the build with an error naming the file.
Like the training caches, a fresh cache on storage that cannot be written (read-only
media) is read without a lock; stale masks there are decoded into memory for one
evaluation instead of failing it.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import atomic
from ..config import Config
from ..errors import DataError
from ..parallel import map_in_pool, usable_cores
from .cache import (
    CACHE_DIR_KEY,
    MANIFEST,
    NPY_HEADER_BYTES,
    allocated_memmap,
    dataset_cache_dir,
    file_entries,
    fingerprint_digest,
    locked_directories,
    remove_unreferenced,
)
from .checks import unknown_value_problems
from .decode import LabelSpec, decode_frame
from .discovery import Frame

# 2: frames with an EXIF orientation are decoded upright (caches of such frames built before were wrong).
NATIVE_FORMAT_VERSION = 2


@dataclass(frozen=True)
class FrameSequence:
    """The frames of one sequence under a dataset root, in temporal (sorted file) order."""

    name: str
    root: Path
    frames: tuple[Frame, ...]


@dataclass(frozen=True)
class NativeMasks:
    """The native-resolution masks of one sequence: cached in a file, or held in memory when it cannot be written."""

    name: str
    path: Path | None  # the flat uint8 .npy holding every frame's ids, one after the other; None: in memory
    shapes: tuple[tuple[int, int], ...]  # (H, W) per frame, in frame order
    held: np.ndarray | None = field(default=None, repr=False, compare=False)  # the flat ids when path is None

    @classmethod
    def in_memory(cls, name: str, masks: Sequence[np.ndarray]) -> NativeMasks:
        """Masks kept in this process only (``masks``: ``[H, W]`` uint8 ids per frame, in frame order)."""
        flat = np.concatenate([m.ravel() for m in masks]) if masks else np.zeros(0, dtype=np.uint8)
        flat.flags.writeable = False
        return cls(name, None, tuple(m.shape for m in masks), flat)

    @functools.cached_property
    def _flat(self) -> np.ndarray:
        return self.held if self.path is None else np.load(self.path, mmap_mode="r")

    @functools.cached_property
    def _offsets(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum([h * w for h, w in self.shapes])])

    def __len__(self) -> int:
        return len(self.shapes)

    def mask(self, index: int) -> np.ndarray:
        """``[H, W]`` uint8 class ids of frame ``index`` (IGNORE_INDEX = ignore), read-only."""
        start, end = self._offsets[index], self._offsets[index + 1]
        return self._flat[start:end].reshape(self.shapes[index])


@dataclass
class NativeMaskOutcome:
    """The masks of every requested sequence, and which were built or reused."""

    masks: dict[str, NativeMasks] = field(default_factory=dict)
    built: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)


def native_cache_dir(root: Path, cfg: Config) -> Path:
    """Folder of a dataset root's native-resolution masks, beside its training-resolution caches."""
    return dataset_cache_dir(root, cfg).parent / "native"


def _settings(spec: LabelSpec) -> dict:
    return {"format_version": NATIVE_FORMAT_VERSION, "classes": [[c.name, list(c.color)] for c in spec.classes],
            "mask_format": spec.mask_format, "unknown_colors": spec.unknown_colors}


def _reuse(directory: Path, settings: dict, files: list[list]) -> NativeMasks | None:
    """The cached masks if the manifest matches ``settings`` and ``files`` and the array is intact."""
    try:
        data = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
        if data["settings"] != settings or data["files"] != files:
            return None
        masks = NativeMasks(data["sequence"], directory / data["masks"], tuple(tuple(s) for s in data["shapes"]))
        if masks._flat.shape != (int(masks._offsets[-1]),):
            return None
        return masks
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _decode_native(frame: Frame, spec: LabelSpec):
    # Runs in a pool worker; returns only what the parent needs.
    decoded = decode_frame(frame, spec, None, with_image=False)
    return decoded.check, decoded.mask


def ensure_native_masks(sequences: Sequence[FrameSequence], cfg: Config, *, log: Callable[[str], None] = print,
                        progress: bool = True, cache_key: str = CACHE_DIR_KEY) -> NativeMaskOutcome:
    """Reuse every fresh native mask cache of ``sequences`` and decode the stale ones in one parallel pass.

    ``cfg`` supplies the label settings (classes, mask format, unknown colours) and the
    cache location (``cache_key`` names the setting that chose it). On storage that cannot be
    written (a read-only cache) fresh masks are read without a lock, like the training caches,
    and stale ones are decoded into memory for this evaluation only. Raises DataError listing
    every unusable frame (file and fix), DiskSpaceError (folder, bytes needed and free) when
    the cache folder cannot hold them.
    """
    spec = LabelSpec.from_config(cfg.dataset)
    settings = _settings(spec)
    outcome = NativeMaskOutcome()
    directories = {seq.name: native_cache_dir(seq.root, cfg) / seq.name for seq in sequences}
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(locked_directories(list(directories.values()), log, cache_key))
            unwritable = None
        except DataError as exc:
            unwritable = exc  # reading needs no write: fresh masks are still used as they are
        stale = _reuse_fresh(sequences, directories, settings, outcome)
        frames = [frame for seq, _ in stale for frame in seq.frames]
        if not frames:
            return outcome
        log(f"native masks: decoding {len(frames)} frames of {len(stale)} sequence(s) "
            f"({', '.join(seq.name for seq, _ in stale)})")
        decoded = iter(_decode_all(frames, spec, cfg.dataset.cache_workers, progress))
        built = [(seq, files, [next(decoded) for _ in seq.frames]) for seq, files in stale]
        if unwritable is not None:
            log(f"native masks: {unwritable} (or pass --cache-dir to dist_seg.evaluate); until then the "
                f"{len(frames)} masks are decoded into memory for each evaluation")
            outcome.masks.update({seq.name: NativeMasks.in_memory(seq.name, masks) for seq, _, masks in built})
            return outcome
        _check_space(built, directories, cache_key)
        for seq, files, masks in built:
            outcome.masks[seq.name] = _write(directories[seq.name], seq, files, settings, masks, cache_key)
            outcome.built.append(seq.name)
    return outcome


def _reuse_fresh(sequences: Sequence[FrameSequence], directories: dict[str, Path], settings: dict,
                 outcome: NativeMaskOutcome) -> list[tuple[FrameSequence, list[list]]]:
    """Record every fresh cache in ``outcome``; return the stale sequences with their file entries."""
    stale = []
    for seq in sequences:
        files = file_entries(seq.root, seq.frames)
        cached = _reuse(directories[seq.name], settings, files)
        if cached is None:
            stale.append((seq, files))
        else:
            outcome.masks[seq.name] = cached
            outcome.reused.append(seq.name)
    return stale


def _decode_all(frames: list[Frame], spec: LabelSpec, workers: int | None, progress: bool) -> list[np.ndarray]:
    """The class-id masks of ``frames`` at their own size, decoded in parallel; DataError naming every bad frame."""
    results = list(map_in_pool(functools.partial(_decode_native, spec=spec), frames,
                               workers=workers or usable_cores(), desc="decoding masks", progress=progress))
    checks = [check for check, _ in results]
    problems = [p for check in checks for p in check.problems]
    problems += [p for p in unknown_value_problems(checks, spec) if p.severity == "error"]
    if problems:
        raise DataError(f"{len(problems)} problem(s) in the frames to evaluate:\n"
                        + "\n".join(f"  {p}" for p in problems))
    return [mask for _, mask in results]


def _check_space(by_sequence: list[tuple[FrameSequence, list[list], list[np.ndarray]]],
                 directories: dict[str, Path], cache_key: str) -> None:
    """DiskSpaceError before the first array is written if a native cache folder cannot hold its new arrays."""
    needed: dict[Path, int] = {}
    for seq, _, masks in by_sequence:
        folder = directories[seq.name].parent
        needed[folder] = needed.get(folder, 0) + sum(m.size for m in masks) + NPY_HEADER_BYTES
    for folder, size in needed.items():
        atomic.ensure_free_space(folder, size, f"the native mask cache ({cache_key})")


def _write(directory: Path, seq: FrameSequence, files: list[list], settings: dict,
           masks: list[np.ndarray], cache_key: str) -> NativeMasks:
    """Publish one sequence: the array under its fingerprinted name, then the manifest, atomically, last."""
    fingerprint = fingerprint_digest(settings, files)
    name = f"masks-{fingerprint}.npy"
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".{name}.{os.getpid()}.tmp"
    try:
        # Allocated, not sparse: a disk that fills meanwhile fails here, not as SIGBUS mid-copy.
        flat = allocated_memmap(tmp, (sum(m.size for m in masks),), cache_key)
        offset = 0
        for mask in masks:
            flat[offset:offset + mask.size] = mask.ravel()
            offset += mask.size
        flat.flush()
        del flat
        atomic.publish(tmp, directory / name)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    shapes = [list(m.shape) for m in masks]
    manifest = {"sequence": seq.name, "root": str(seq.root), "settings": settings, "fingerprint": fingerprint,
                "masks": name, "shapes": shapes, "files": files}
    atomic.write_text(directory / MANIFEST, json.dumps(manifest, separators=(",", ":")) + "\n")
    remove_unreferenced(directory, {name})
    return NativeMasks(seq.name, directory / name, tuple(tuple(s) for s in shapes))

