"""Output paths: where dist_seg may write, proven before any expensive work, and who may write there."""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import socket
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

from .errors import ConfigError


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
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return pid != os.getpid()


@contextlib.contextmanager
def exclusive_output_folder(folder: Path, key: str, log: Callable[[str], None] = print) -> Iterator[None]:
    """Hold ``<folder>/.lock`` exclusively while the block runs: one dist_seg run per output folder.

    Two runs writing one folder interleave checkpoints, history and splits. The lock is an
    ``flock``, so the kernel drops it when its holder dies (SIGKILL, OOM, node reboot) and the
    next run simply takes it; the file names the holder (host, PID, start) for the refusal.
    On filesystems without ``flock`` the named holder is checked instead: a dead process on
    this host is taken over, a live one (or any on another host) refuses. Creates ``folder``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / OUTPUT_LOCK
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
