"""Output paths: where dist_seg may write, proven before any expensive work."""

from __future__ import annotations

import tempfile
from pathlib import Path

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
