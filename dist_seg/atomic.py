"""Atomic file writes: write to a temporary name in the same directory, fsync, rename.

A reader (or a run killed halfway) therefore sees either the old file or the new one,
never a torn one. Every file dist_seg writes into an output or cache directory goes
through here.

Temporary files are named ``.<name>.<host>-<pid>.<random>.tmp`` so that a later process can
tell a writer that died (SIGKILL, OOM killer, preemption) from one still writing, and remove
what it left behind (:func:`remove_stale_temporaries`). Files get the mode the user's umask
gives a new file (``mkstemp`` alone would leave them 0600, unreadable to a team sharing runs).
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import socket
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from .errors import DiskSpaceError

_HOST = re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname())[:32] or "host"
_TEMP = re.compile(r"^\..+\.(?P<host>[A-Za-z0-9_]+)-(?P<pid>\d+)\.[^.]+\.tmp$")
_umask_lock = threading.Lock()


def _file_mode() -> int:
    """Mode of a new regular file under the current umask (what ``open(..., 'w')`` would give)."""
    with _umask_lock:  # umask can only be read by setting it; keep other writers out meanwhile
        mask = os.umask(0o022)
        os.umask(mask)
    return 0o666 & ~mask


def _temp_prefix(path: Path) -> str:
    return f".{path.name}.{_HOST}-{os.getpid()}."


def temporary_name(path: str | os.PathLike, tag: str) -> Path:
    """A temporary name next to ``path`` for a writer that does not use :func:`atomic_open` (a hard link).

    It follows the same naming, so :func:`remove_stale_temporaries` cleans it up if the writer dies.
    """
    path = Path(path)
    return path.with_name(f"{_temp_prefix(path)}{tag}.tmp")


@contextmanager
def staging_folder(path: str | os.PathLike) -> Iterator[Path]:
    """A new empty folder next to ``path``, removed with its contents on exit, for a writer that stages several files.

    It is named like a temporary file, so :func:`remove_stale_temporaries` removes it if its
    writer is killed before the exit.
    """
    path = Path(path)
    folder = Path(tempfile.mkdtemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[BinaryIO]:
    """Open a temporary file next to ``path``; on clean exit it replaces ``path``.

    On an exception the temporary file is removed and ``path`` is untouched; a write that
    failed because the disk is full raises :class:`DiskSpaceError` naming the folder.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, _file_mode())
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        written = _size(tmp)
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise_if_disk_full(exc, path, written)
        raise


def raise_if_disk_full(exc: BaseException, path: Path, written: int) -> None:
    """Raise :class:`DiskSpaceError` (naming ``path``'s folder) when ``exc`` ended a write of ``path`` on a full disk.

    For writers that cannot go through :func:`atomic_open` (a library that saves to a path);
    ``written`` is how many bytes had been written when it failed.
    """
    if isinstance(exc, Exception) and _is_disk_full(exc, path.parent):
        raise DiskSpaceError(
            f"no space left on the device holding {path.parent} while writing {path.name} "
            f"({written / 2**20:.1f} MiB written, {free_bytes(path.parent) / 2**20:.1f} MiB free); "
            "free space there or point the output elsewhere") from exc


def _size(path: str | os.PathLike) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def _is_disk_full(exc: Exception, directory: Path) -> bool:
    """ENOSPC, or an error a library raised while the disk was full (torch.save says 'unexpected pos')."""
    chain: BaseException | None = exc
    while chain is not None:
        if isinstance(chain, OSError) and chain.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        chain = chain.__cause__ or chain.__context__
    return isinstance(exc, RuntimeError) and free_bytes(directory) < 2**20


def free_bytes(directory: str | os.PathLike) -> int:
    """Bytes available to this user on the filesystem holding ``directory`` (its nearest existing parent)."""
    probe = Path(directory)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free


def ensure_free_space(directory: str | os.PathLike, needed: int, what: str) -> None:
    """Raise :class:`DiskSpaceError` before writing ``needed`` bytes of ``what`` into ``directory`` if they cannot fit."""
    free = free_bytes(directory)
    if needed > free:
        raise DiskSpaceError(
            f"{what} needs {needed / 2**20:.1f} MiB in {directory} but only {free / 2**20:.1f} MiB are free; "
            "free space there or choose another folder")


def remove_stale_temporaries(directory: str | os.PathLike) -> list[Path]:
    """Delete temporaries in ``directory`` left by writers of this host that no longer run.

    Only files (and :func:`staging_folder` folders) of our own naming are considered, and only
    those whose writing process is gone: a concurrent writer's file (another rank, another run
    on this host) is never touched, and files from other hosts (a shared filesystem) are left
    to those hosts.
    """
    removed = []
    directory = Path(directory)
    if not directory.is_dir():
        return removed
    for entry in directory.iterdir():
        match = _TEMP.match(entry.name)
        if not match or match["host"] != _HOST or pid_alive(int(match["pid"])):
            continue
        try:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            removed.append(entry)
        except FileNotFoundError:
            pass
    return removed


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` on this host exists (this process counts as alive)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Atomically write ``data`` to ``path``."""
    with atomic_open(path, "wb") as fh:
        fh.write(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Atomically write UTF-8 ``text`` to ``path``."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def publish(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """Flush a temporary file written by other means (a memmap) to disk, then rename it to ``path``."""
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
