"""Output paths: where dist_seg may write, proven before any expensive work, and who may write there."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import re
import socket
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from . import atomic
from .errors import ConfigError

# Longest file name (bytes) on the filesystems dist_seg writes to (ext4, xfs, btrfs, NFS...).
NAME_MAX = 255


def output_option(text: str, key: str) -> Path:
    """The folder an ``--out``-style option names; an empty value (which would mean the current directory) is refused."""
    if not text.strip():
        raise ConfigError(f"{key} is empty; name the output folder (use {key} . to write into the current directory)")
    return Path(text)


def is_inside(path: Path, folder: Path) -> bool:
    """Whether ``path`` is ``folder`` or below it, by their absolute, normalised spelling (``..`` applied)."""
    path, folder = Path(os.path.abspath(path)), Path(os.path.abspath(folder))
    return path == folder or folder in path.parents


def check_outside_dataset(folder: Path, root: Path, subfolders: Sequence[str], key: str) -> None:
    """Refuse a folder dist_seg would write into that lies inside the dataset's frame or label folders.

    Files written there would be discovered as frames (or masks) by the next run.
    """
    for name in subfolders:
        data = root / name
        # Also through symlinks: resolve() follows the part of the path that exists.
        if is_inside(folder, data) or is_inside(folder.resolve(), data.resolve()):
            raise ConfigError(f"{key}: {folder} is inside the dataset's {name}/ folder ({data}); files written there "
                              f"would be taken for frames or masks by the next run: choose a folder outside {root / name}")


def fit_name(stem: str, reserve: int) -> str:
    """``stem``, or its start tagged with a hash of the whole, so that it plus ``reserve`` more bytes (the
    suffixes the caller adds, a temporary name's decoration) fits in :data:`NAME_MAX` bytes.

    The hash keeps two long names that share a prefix apart.
    """
    limit = NAME_MAX - reserve
    if len(stem.encode()) <= limit:
        return stem
    tag = "~" + hashlib.sha256(stem.encode()).hexdigest()[:12]
    short = stem.encode()[:limit - len(tag)].decode(errors="ignore")  # never half a UTF-8 character
    return short + tag


def open_for_append(path: Path) -> int:
    """A write-only, appending descriptor of ``path`` (created if missing); a symlink there is refused (ELOOP).

    Appending through a link someone planted in a shared output folder would write into any
    file the user can write.
    """
    try:
        return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise OSError(exc.errno, f"{path} is a symbolic link; dist_seg does not append through links: "
                                     "remove it", str(path)) from exc
        raise


def check_not_symlink(path: Path, key: str) -> None:
    """Refuse, before a run starts, a symlink where dist_seg will append a log."""
    if path.is_symlink():
        raise ConfigError(f"{key}: {path} is a symbolic link (to {os.readlink(path)}); dist_seg appends to this "
                          "file and does not follow links there: remove the link")


def check_writable_folder(folder: Path, key: str) -> None:
    """Prove ``folder`` is, or can be created as, a folder a file can be written to (``os.access`` lies to root).

    Nothing is created: a folder that does not exist yet is probed through its nearest existing
    parent, so a command refused later for another reason leaves no empty folder behind.
    """
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        if existing == folder:
            raise ConfigError(f"{key}: {folder} is a file, not a folder; choose a folder path (or move the file)")
        raise ConfigError(f"{key}: cannot write to {folder} ({existing} is a file, not a folder); choose another "
                          "folder (or move the file)")
    try:
        with tempfile.TemporaryFile(dir=existing, prefix=".write-probe."):
            pass
    except OSError as exc:
        raise ConfigError(f"{key}: cannot write to {folder} ({exc.strerror or exc}); make it writable or "
                          "choose another folder") from exc


# ----------------------------------------------------------------------------- one run per output folder

OUTPUT_LOCK = ".lock"


def _holder_line() -> str:
    return f"host {socket.gethostname()}, PID {os.getpid()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}"


def _read_holder(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").strip() or "holder unknown"
    except OSError:
        return "holder unknown"


def _holder_alive(text: str) -> bool:
    """Whether the process a lock file names still runs; another host's process cannot be checked, so it counts."""
    match = re.match(r"host (\S+), PID (\d+)", text)
    if match is None:
        return False
    host, pid = match.group(1).rstrip(","), int(match.group(2))
    if host != socket.gethostname():
        return True
    return pid != os.getpid() and atomic.pid_alive(pid)


@contextlib.contextmanager
def exclusive_output_folder(folder: Path, key: str, log: Callable[[str], None] = print) -> Iterator[None]:
    """Hold ``<folder>/.lock`` exclusively while the block runs: one dist_seg run per output folder.

    Two runs writing one folder interleave checkpoints, history and splits. The lock is an
    ``flock``, so the kernel drops it when its holder dies (SIGKILL, OOM, node reboot) and the
    next run simply takes it; the file names the holder (host, PID, start) for the refusal.
    On filesystems without ``flock`` the named holder is checked instead: a dead process on
    this host is taken over, a live one (or any on another host) refuses. Creates ``folder``;
    a folder created here that holds nothing but the lock at the end (a run refused before
    writing anything) is removed again.
    """
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / OUTPUT_LOCK
    try:
        with _locked(folder, path, key, log):
            yield
    finally:
        if created and [p.name for p in folder.iterdir()] == [OUTPUT_LOCK]:
            path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                folder.rmdir()


@contextlib.contextmanager
def _locked(folder: Path, path: Path, key: str, log: Callable[[str], None]) -> Iterator[None]:
    """The flock of :func:`exclusive_output_folder`."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise ConfigError(f"{key}: cannot create the lock file {path} ({exc.strerror or exc}); make {folder} "
                          "writable or choose another folder") from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(f"{key}: {folder} is in use by another dist_seg run ({_read_holder(path)}); wait for "
                              f"it to finish (or stop it), or choose another {key}") from None
        except OSError as exc:  # ENOLCK / EOPNOTSUPP: this filesystem has no flock
            holder = _read_holder(path)
            if _holder_alive(holder):
                raise ConfigError(f"{key}: {folder} is in use by another dist_seg run ({holder}); {path} cannot "
                                  f"be locked here ({exc.strerror}), so its holder is trusted: wait for it to finish, "
                                  f"or delete {path} if that process is gone") from exc
            log(f"output folder: cannot lock {path} ({exc.strerror}); its last holder ({holder}) is gone: taking it over")
        os.ftruncate(fd, 0)
        os.pwrite(fd, (_holder_line() + "\n").encode(), 0)
        yield
    finally:
        os.close(fd)
