"""Per-sequence memory-mapped uint8 caches of decoded frames, built once, reused until stale.

Layout (one folder per dataset root and cache resolution)::

    <cache root>/<root name>-<hash of resolved root>/<H>x<W>/
        .lock                                 held while checking / building
        .in_use                               held (shared) by each run reading these caches
        <sequence>/manifest.json              written LAST: its presence means "valid"
        <sequence>/masks-<fingerprint>.npy    [N, H, W] uint8 class ids (255 = ignore)
        <sequence>/images-<fingerprint>.npy   [N, 3, H, W] uint8, channels-first (optional)

The fingerprint covers the frame files (names, sizes, mtimes, ctimes) and every setting that
changes the arrays. Array files are named by it, so a rebuild never overwrites the
arrays an older manifest points to, and two nodes building the same cache write the
same names and bytes. A build killed at any point leaves at worst temporary or
unreferenced array files and no new manifest; the next build removes them.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import atomic
from ..config import Config, DatasetConfig
from ..config.classes import IGNORE_INDEX
from ..errors import DataError, DiskSpaceError
from ..limits import ensure_open_files, map_failure
from ..parallel import map_in_pool, usable_cores
from .decode import DecodedFrame, FrameCheck, LabelSpec, decode_frame
from .discovery import DatasetListing, Frame, SequenceListing

# 2: frames with an EXIF orientation are decoded upright (caches of such frames built before were wrong).
# 3: the file list records each file's ctime too (a rewrite that keeps size and mtime is noticed).
CACHE_FORMAT_VERSION = 3
MANIFEST = "manifest.json"
PREPARE_FIX = "run python -m dist_seg.prepare CONFIG (training runs it for you) with this config"
# The settings that choose the cache root, as messages name them (a command may pass its own option).
CACHE_DIR_KEY = "dataset.cache_dir (or $DIST_SEG_CACHE)"


def output_size(cfg: Config) -> tuple[int, int]:
    """(H, W) of cached and served frames: ``dataset.cache_size`` or ``training.image_size``."""
    return tuple(cfg.dataset.cache_size or cfg.training.image_size)


def cache_root(ds: DatasetConfig) -> Path:
    """``dataset.cache_dir``, else ``$DIST_SEG_CACHE``, else ``~/.cache/dist_seg``."""
    if ds.cache_dir is not None:
        return Path(ds.cache_dir)
    return Path(os.environ.get("DIST_SEG_CACHE") or Path.home() / ".cache" / "dist_seg")


def dataset_cache_dir(root: Path, cfg: Config) -> Path:
    """Cache folder of one dataset root for this config's cache settings (root may be read-only).

    ``<cache root>/<dataset>-<hash of its path>/<H>x<W>-<settings digest>``: each combination
    of size, classes, mask format and the rest of :class:`CacheSettings` has its own folder,
    so switching between configs of one dataset (index and RGB masks, two sizes) reuses
    both caches instead of rebuilding one. :func:`prune_setting_folders` bounds their number.
    """
    resolved = Path(root).resolve()
    key = f"{resolved.name}-{hashlib.sha256(str(resolved).encode()).hexdigest()[:12]}"
    height, width = output_size(cfg)
    settings = json.dumps(CacheSettings.from_config(cfg).as_json(), sort_keys=True)
    return cache_root(cfg.dataset) / key / f"{height}x{width}-{hashlib.sha256(settings.encode()).hexdigest()[:8]}"


# Setting folders, and the plain HxW folders of caches built before they had a settings digest.
_SETTING_FOLDER = re.compile(r"^\d+x\d+(-[0-9a-f]{8})?$")
LAST_USED = ".last_used"
# Shared-locked by every run that reads a setting folder, for its whole life: pruning skips it.
IN_USE = ".in_use"


def prune_setting_folders(current: Path, keep: int, log: Callable[[str], None]) -> list[Path]:
    """Mark ``current`` as used now and delete all but the ``keep`` most recently used setting folders beside it.

    A folder another process holds locked (it is being built or prepared right now, or a run
    reads it: :data:`IN_USE`) is left alone. Returns the folders deleted.
    """
    marker = current / LAST_USED
    marker.touch()
    os.utime(marker)

    def last_used(folder: Path) -> float:
        stamp = folder / LAST_USED
        return stamp.stat().st_mtime if stamp.exists() else folder.stat().st_mtime

    others = [f for f in current.parent.iterdir() if f.is_dir() and f != current and _SETTING_FOLDER.match(f.name)]
    removed = []
    for folder in sorted(others, key=last_used, reverse=True)[max(keep - 1, 0):]:
        with contextlib.ExitStack() as stack:
            try:
                for name in (".lock", IN_USE):
                    handle = stack.enter_context(open(folder / name, "a+b"))
                    fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # in use, or not ours to lock: keep it
            shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
        log(f"cache: removed {folder} (dataset.cache_keep_settings {keep}: least recently used)")
    return removed


@dataclass(frozen=True)
class CacheSettings:
    """Every setting that changes the cached arrays."""

    size: tuple[int, int]
    cache_images: bool
    spec: LabelSpec

    @classmethod
    def from_config(cls, cfg: Config) -> CacheSettings:
        return cls(output_size(cfg), cfg.dataset.cache_images, LabelSpec.from_config(cfg.dataset))

    def as_json(self) -> dict:
        return {"format_version": CACHE_FORMAT_VERSION, "size": list(self.size), "cache_images": self.cache_images,
                "classes": [[c.name, list(c.color)] for c in self.spec.classes],
                "mask_format": self.spec.mask_format, "unknown_colors": self.spec.unknown_colors}


@dataclass(frozen=True)
class SequenceCache:
    """A valid cache of one sequence, as its manifest describes it."""

    name: str
    directory: Path
    frames: tuple[str, ...]  # image paths (under the root it was opened for), in array order
    size: tuple[int, int]
    masks_file: str
    images_file: str | None
    class_pixel_counts: np.ndarray  # [num_classes] int64, at cache resolution
    ignored_pixels: int

    @property
    def arrays(self) -> int:
        """Memory-mapped arrays (and so open files) this cache takes while read."""
        return 1 if self.images_file is None else 2

    def open_masks(self) -> np.ndarray:
        """Read-only ``[N, H, W]`` uint8 memmap."""
        return _map(self.directory / self.masks_file)

    def open_images(self) -> np.ndarray | None:
        """Read-only ``[N, 3, H, W]`` uint8 memmap, or None when images are not cached."""
        return None if self.images_file is None else _map(self.directory / self.images_file)


def _map(path: Path) -> np.ndarray:
    """``np.load(path, mmap_mode="r")``; a mapping refused by a process limit is a DataError naming it."""
    try:
        return np.load(path, mmap_mode="r")
    except OSError as exc:
        failure = map_failure(exc, path, path.stat().st_size)
        if failure is None:
            raise
        raise failure from exc


# ----------------------------------------------------------------------------- fingerprints


def file_entries(root: Path, frames: Sequence[Frame]) -> list[list]:
    """Name, size, mtime and ctime of each frame's image and mask: what says a file is unchanged, without reading it.

    The ctime is set by the kernel on every write (and cannot be set back the way ``cp -p``,
    ``rsync -t`` or ``touch -r`` restore an mtime), so content rewritten at the same size and
    mtime is noticed too. Copying or moving the dataset to another filesystem gives new
    ctimes and therefore one rebuild.
    """
    entries = []
    for frame in frames:
        image, mask = frame.image.stat(), frame.mask.stat()
        entries.append([str(frame.image.relative_to(root)), image.st_size, image.st_mtime_ns,
                        str(frame.mask.relative_to(root)), mask.st_size, mask.st_mtime_ns,
                        image.st_ctime_ns, mask.st_ctime_ns])
    return entries


def fresh_class_pixel_counts(sequences: Sequence[Any], cfg: Config) -> np.ndarray | None:
    """Summed class pixel counts of ``sequences`` (split sequences) from their cache manifests, when every one
    is fresh; else None. Reads manifests and file stats only, no frame."""
    settings = CacheSettings.from_config(cfg).as_json()
    total = None
    for seq in sequences:
        cache, data, _ = _read_manifest(dataset_cache_dir(seq.root, cfg) / seq.name, seq.root, settings)
        if cache is None or data["files"] != file_entries(seq.root, seq.frame_records()):
            return None
        total = cache.class_pixel_counts if total is None else total + cache.class_pixel_counts
    return total


def fingerprint_digest(settings: dict, files: list[list]) -> str:
    blob = json.dumps({"settings": settings, "files": files}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _read_manifest(directory: Path, root: Path, settings: dict) -> tuple[SequenceCache | None, dict | None, str]:
    """The cache a manifest describes if it is intact and made with ``settings``, else why not.

    Frame paths are stored relative to the dataset root and joined to ``root`` here, so
    the same cache serves a root spelled differently (symlink, relative config path).
    """
    path = directory / MANIFEST
    if not path.exists():
        return None, None, "not built yet"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        stored = data["settings"]
        frames = tuple(str(Path(root) / entry[0]) for entry in data["files"])
        cache = SequenceCache(data["sequence"], directory, frames, tuple(data["size"]),
                              data["masks"], data["images"], np.asarray(data["class_pixel_counts"], dtype=np.int64),
                              int(data["ignored_pixels"]))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return None, None, f"manifest {path} is unreadable ({exc})"
    if stored != settings:
        changed = ", ".join(k for k in settings if stored.get(k) != settings[k])
        return None, data, f"settings changed ({changed})"
    try:
        expected = (len(cache.frames), *cache.size)
        if cache.open_masks().shape != expected:
            return None, data, "mask array has the wrong shape"
        images = cache.open_images()
        if images is not None and images.shape != (expected[0], 3, *expected[1:]):
            return None, data, "image array has the wrong shape"
    except (OSError, ValueError) as exc:
        return None, data, f"array file missing or truncated ({exc})"
    return cache, data, ""


def load_sequence_cache(root: Path, name: str, frames: Sequence[str], cfg: Config) -> SequenceCache:
    """Open the cache of one sequence for serving, checking it matches ``frames`` (image paths).

    Does not look at the source PNGs (prepare checks freshness): raises DataError with
    the fix when the cache is missing, made with other settings, or for other frames.
    """
    directory = dataset_cache_dir(root, cfg) / name
    cache, _, reason = _read_manifest(directory, root, CacheSettings.from_config(cfg).as_json())
    if cache is None:
        raise DataError(f"cache of sequence {name} in {directory} is not usable ({reason}): {PREPARE_FIX}")
    if list(cache.frames) != list(frames):
        raise DataError(f"cache of sequence {name} in {directory} holds other frames than splits.json: {PREPARE_FIX}")
    return cache


# ----------------------------------------------------------------------------- building


@dataclass
class _CachedFrame:
    decoded: DecodedFrame
    class_counts: np.ndarray | None  # [256] int64 over the resized mask


def _decode_for_cache(frame: Frame, spec: LabelSpec, size: tuple[int, int], with_image: bool) -> _CachedFrame:
    # Runs in a pool worker: counting here keeps the parent free to write arrays.
    decoded = decode_frame(frame, spec, size, with_image)
    counts = None if decoded.mask is None else np.bincount(decoded.mask.ravel(), minlength=256)
    return _CachedFrame(decoded, counts)


class _SequenceWriter:
    """Fills the temporary arrays of one sequence and publishes them if every frame was usable."""

    def __init__(self, directory: Path, root: Path, listing: SequenceListing, files: list[list],
                 settings: CacheSettings) -> None:
        self.directory, self.root, self.listing, self.files, self.settings = directory, root, listing, files, settings
        self.settings_json = settings.as_json()
        self.fingerprint = fingerprint_digest(self.settings_json, files)
        self.remaining = len(listing.frames)
        self.usable = True
        self.counts = np.zeros(256, dtype=np.int64)
        self.shape = (len(listing.frames), *settings.size)
        self.masks_name = f"masks-{self.fingerprint}.npy"
        self.images_name = f"images-{self.fingerprint}.npy" if settings.cache_images else None
        tag = f"{os.getpid()}.tmp"
        self.tmp_masks = directory / f".{self.masks_name}.{tag}"
        self.tmp_images = directory / f".{self.images_name}.{tag}" if self.images_name else None
        self.masks = self.images = None

    @property
    def nbytes(self) -> int:
        """Disk space the arrays take once written (headers included)."""
        n, h, w = self.shape
        return (n * h * w + NPY_HEADER_BYTES) * (4 if self.images_name else 1)

    def allocate(self) -> None:
        """Create the temporary arrays with every block allocated, so a full disk fails here, not as SIGBUS."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self.masks = allocated_memmap(self.tmp_masks, self.shape)
        if self.tmp_images is not None:
            n, h, w = self.shape
            self.images = allocated_memmap(self.tmp_images, (n, 3, h, w))

    def add(self, index: int, frame: _CachedFrame) -> None:
        self.remaining -= 1
        decoded = frame.decoded
        if decoded.mask is None:  # the frame has an error; its check says which
            self.usable = False
            return
        self.masks[index] = decoded.mask
        if self.images is not None:
            self.images[index] = decoded.image
        self.counts += frame.class_counts

    def finish(self) -> SequenceCache | None:
        """Publish: arrays renamed to their final names, then the manifest, atomically, last."""
        if not self.usable:
            self.abort()
            return None
        published = [(self.tmp_masks, self.masks_name)]
        if self.tmp_images is not None:
            published.append((self.tmp_images, self.images_name))
        self.masks.flush()
        if self.images is not None:
            self.images.flush()
        self.masks = self.images = None
        for tmp, name in published:
            atomic.publish(tmp, self.directory / name)
        num_classes = len(self.settings.spec.classes)
        frames = tuple(str(f.image) for f in self.listing.frames)
        manifest = {
            "sequence": self.listing.name, "root": str(self.root), "settings": self.settings_json,
            "fingerprint": self.fingerprint, "size": list(self.settings.size),
            "masks": self.masks_name, "images": self.images_name,
            "class_pixel_counts": self.counts[:num_classes].tolist(),
            "ignored_pixels": int(self.counts[IGNORE_INDEX]), "files": self.files,
        }
        # Compact: the file list has one entry per frame.
        atomic.write_text(self.directory / MANIFEST, json.dumps(manifest, separators=(",", ":")) + "\n")
        remove_unreferenced(self.directory, {self.masks_name, self.images_name})
        return SequenceCache(self.listing.name, self.directory, frames, self.settings.size, self.masks_name,
                             self.images_name, self.counts[:num_classes].copy(), int(self.counts[IGNORE_INDEX]))

    def abort(self) -> None:
        self.masks = self.images = None
        for tmp in (self.tmp_masks, self.tmp_images):
            if tmp is not None:
                tmp.unlink(missing_ok=True)


# Upper bound of an .npy header (numpy pads it to a multiple of 64 bytes).
NPY_HEADER_BYTES = 4096


def allocated_memmap(path: Path, shape: tuple[int, ...], cache_key: str = CACHE_DIR_KEY) -> np.memmap:
    """A writable uint8 ``.npy`` memmap at ``path`` whose blocks are all allocated on disk.

    ``open_memmap`` alone makes a sparse file; a block the full disk cannot supply would then
    fault (SIGBUS) at the first write into it. ``posix_fallocate`` turns that into ENOSPC now.
    The file gets the umask's mode (numpy opens it with ``open``), like every other output.
    ``cache_key`` names the setting that chose the cache folder, for the message on a full disk.
    """
    array = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=shape)
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL):  # no fallocate here (some network filesystems)
            return array
        path.unlink(missing_ok=True)  # the mapping dies with this frame
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskSpaceError(
                f"no space left in {path.parent} for the cache array {path.name.lstrip('.')} "
                f"({int(np.prod(shape)) / 2**20:.1f} MiB, {atomic.free_bytes(path.parent) / 2**20:.1f} MiB free); "
                f"free space there or set {cache_key} to a larger disk") from exc
        raise
    finally:
        os.close(fd)
    return array


def remove_unreferenced(directory: Path, keep: set[str | None]) -> None:
    # Called with the folder's lock held, so no other build is writing here.
    if not directory.is_dir():
        return
    for path in directory.iterdir():
        is_array = path.suffix == ".npy" and path.name.startswith(("masks-", "images-"))
        if (is_array and path.name not in keep) or path.name.endswith(".tmp"):
            path.unlink(missing_ok=True)


@contextlib.contextmanager
def locked_directories(directories: Sequence[Path], log: Callable[[str], None],
                       cache_key: str = CACHE_DIR_KEY) -> Iterator[None]:
    """Hold an exclusive lock on each cache folder so concurrent prepares build once.

    ``cache_key`` names the setting that chose the cache root, for the message when it cannot be written.
    """
    with contextlib.ExitStack() as stack:
        for directory in sorted(set(directories)):
            try:
                directory.mkdir(parents=True, exist_ok=True)
                handle = stack.enter_context(open(directory / ".lock", "a+b"))
            except OSError as exc:
                raise DataError(f"cannot write the cache folder {directory} ({exc}): set {cache_key} "
                                "to a writable folder") from exc
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            except OSError as exc:
                # Some network file systems lack flock; builds stay atomic, only not deduplicated.
                log(f"cache: cannot lock {directory} ({exc}); continuing without a lock")
        yield


@dataclass
class CacheOutcome:
    """What ensuring the caches did: usable caches, which were built or reused, frame checks."""

    caches: list[SequenceCache] = field(default_factory=list)
    built: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    directories: list[Path] = field(default_factory=list)
    checks: list[FrameCheck] = field(default_factory=list)


def hold_in_use(directories: Sequence[Path], hold: contextlib.ExitStack) -> None:
    """Shared-lock :data:`IN_USE` of each setting folder until ``hold`` closes, so no prune removes it meanwhile.

    Called with the folders' build lock held: a pruner, which takes both locks, cannot slip in
    between. A folder that cannot be locked (no flock on this filesystem) is used unprotected.
    """
    for directory in sorted(set(directories)):
        try:
            handle = hold.enter_context(open(directory / IN_USE, "a+b"))
            fcntl.flock(handle.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            continue


def ensure_caches(listings: Sequence[DatasetListing], cfg: Config, *, log: Callable[[str], None] = print,
                  progress: bool = True, hold: contextlib.ExitStack | None = None) -> CacheOutcome:
    """Reuse every fresh sequence cache and rebuild the stale ones in one parallel pass.

    With ``hold`` the setting folders stay shared-locked against pruning until it closes
    (a training run reads them for its whole life).

    Fresh caches are detected from file names, sizes and mtimes alone (no PNG is opened).
    Building decodes each frame once with the same checks as the validator; the frame
    checks are returned so the caller can report problems. A sequence with an unusable
    frame gets no manifest.
    """
    settings = CacheSettings.from_config(cfg)
    outcome = CacheOutcome(directories=[dataset_cache_dir(listing.root, cfg) for listing in listings])
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(locked_directories(outcome.directories, log))
        except DataError:
            # Read-only storage: a complete, fresh cache is read without a lock (reading needs no write).
            if _reuse_all(listings, outcome, settings):
                log(f"cache: {', '.join(map(str, outcome.directories))} cannot be written; its caches are "
                    "complete and fresh, so they are used as they are")
                return outcome
            raise
        writers: list[_SequenceWriter] = []
        try:
            for listing, directory in zip(listings, outcome.directories, strict=False):
                for seq in listing.sequences:
                    if seq.frames:
                        writer = _reuse_or_plan(seq, listing.root, directory / seq.name, settings, outcome, log)
                        writers += [writer] if writer else []
            _allocate(writers)
            _fill(writers, settings, cfg.dataset, outcome, progress)
        except BaseException:
            for writer in writers:
                writer.abort()
            raise
        if hold is not None:
            hold_in_use(outcome.directories, hold)
        for directory in sorted(set(outcome.directories)):
            prune_setting_folders(directory, cfg.dataset.cache_keep_settings, log)
    return outcome


def _reuse_all(listings: Sequence[DatasetListing], outcome: CacheOutcome, settings: CacheSettings) -> bool:
    """Record every sequence's cache as reused if all are fresh (nothing is written); False if any is not."""
    for listing, directory in zip(listings, outcome.directories, strict=False):
        for seq in listing.sequences:
            if not seq.frames:
                continue
            files = file_entries(listing.root, seq.frames)
            cache, data, _ = _read_manifest(directory / seq.name, listing.root, settings.as_json())
            if cache is None or data["files"] != files:
                outcome.caches.clear()
                outcome.reused.clear()
                return False
            outcome.caches.append(cache)
            outcome.reused.append(seq.name)
    return True


def _reuse_or_plan(seq: SequenceListing, root: Path, directory: Path, settings: CacheSettings,
                   outcome: CacheOutcome, log: Callable[[str], None]) -> _SequenceWriter | None:
    """Record a fresh cache as reused, or return the writer that rebuilds a stale one."""
    files = file_entries(root, seq.frames)
    cache, data, reason = _read_manifest(directory, root, settings.as_json())
    if cache is not None and data["files"] == files:
        outcome.caches.append(cache)
        outcome.reused.append(seq.name)
        return None
    if cache is not None:
        reason = _files_change(data["files"], files)
    log(f"cache: building {seq.name} ({reason})")
    # Leftovers of killed builds go; the arrays of the current manifest stay valid meanwhile.
    remove_unreferenced(directory, {data.get("masks"), data.get("images")} if data else set())
    return _SequenceWriter(directory, root, seq, files, settings)


def _allocate(writers: list[_SequenceWriter]) -> None:
    """Check each cache folder's free space for the whole build first, then allocate every array."""
    needed: dict[Path, int] = {}
    for writer in writers:
        needed[writer.directory.parent] = needed.get(writer.directory.parent, 0) + writer.nbytes
    for directory, size in needed.items():
        atomic.ensure_free_space(directory, size, f"the cache build ({CACHE_DIR_KEY})")
    if writers:
        ensure_open_files(sum(2 if w.settings.cache_images else 1 for w in writers), "the cache build")
    for writer in writers:
        writer.allocate()


def _fill(writers: list[_SequenceWriter], settings: CacheSettings, ds: DatasetConfig, outcome: CacheOutcome,
          progress: bool) -> None:
    jobs = [(w, i, frame) for w in writers for i, frame in enumerate(w.listing.frames)]
    if not jobs:
        return
    decode = functools.partial(_decode_for_cache, spec=settings.spec, size=settings.size,
                               with_image=settings.cache_images)
    results = map_in_pool(decode, [frame for _, _, frame in jobs], workers=ds.cache_workers or usable_cores(),
                          desc="building cache", progress=progress)
    for (writer, index, _), result in zip(jobs, results, strict=False):
        outcome.checks.append(result.decoded.check)
        writer.add(index, result)
        if writer.remaining == 0:
            cache = writer.finish()
            if cache is not None:
                outcome.caches.append(cache)
                outcome.built.append(writer.listing.name)


def _files_change(old: list[list], new: list[list]) -> str:
    """Why a file list no longer matches, in words (for the rebuild log line)."""
    old_by_name, new_by_name = {e[0]: e for e in old}, {e[0]: e for e in new}
    added = len(new_by_name.keys() - old_by_name.keys())
    removed = len(old_by_name.keys() - new_by_name.keys())
    modified = sum(1 for k in new_by_name.keys() & old_by_name.keys() if new_by_name[k] != old_by_name[k])
    parts = [f"{n} {what}" for n, what in ((added, "frames added"), (removed, "frames removed"),
                                          (modified, "frames modified")) if n]
    return ", ".join(parts) or "file list changed"
