"""Mounts for storage tests: a small tmpfs (full disks) and read-only binds, as root where permitted; skipped elsewhere."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def small_tmpfs(directory: Path, size: str = "3M") -> Iterator[Path]:
    """Mount a tmpfs of ``size`` at ``directory`` for the block; skip the test if mounting is not permitted."""
    directory.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({result.stderr.strip() or 'mount failed'}); needs root")
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], capture_output=True)


@contextlib.contextmanager
def read_only_bind(folder: Path) -> Iterator[Path]:
    """``folder`` re-mounted read-only over itself (chmod does not stop root); skip where mount is not permitted."""
    first = subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True, text=True)
    if first.returncode != 0:
        pytest.skip(f"cannot bind-mount here ({first.stderr.strip() or 'mount failed'}); needs root")
    try:
        second = subprocess.run(["mount", "-o", "remount,ro,bind", str(folder)], capture_output=True, text=True)
        if second.returncode != 0:
            pytest.skip(f"cannot remount read-only ({second.stderr.strip()})")
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)
