"""``memory_diagnostics.log``: one human-readable line per VRAM sample, peaks at the end.

Every line keeps the original pipeline's ``VRAM: X MB (alloc), Y MB (reserved), Z MB free /
T MB total`` text, so existing greps keep working, and adds the driver's per-process figure,
the part outside PyTorch, host RSS, where the numbers came from, the rank and the step.
All ranks append to the same file: each line is a single ``os.write`` on an ``O_APPEND``
descriptor, which the kernel does not interleave with other writers on a local filesystem.
The file is opened per line (once a second at most), so there is nothing to close.
"""

from __future__ import annotations

import os
import time
from datetime import datetime
from pathlib import Path

from ..paths import open_for_append
from .vram import PeakSummary, VramSample

FILE_NAME = "memory_diagnostics.log"

def _mb(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def _origin(source: str, pid_visible: bool) -> str:
    if source == "none":
        return "source none"
    return f"source {source}, " + ("own PID visible" if pid_visible else "own PID not visible: device-level")


def _stamp(unix_time: float) -> str:
    return datetime.fromtimestamp(unix_time).isoformat(timespec="milliseconds")


def format_sample(sample: VramSample) -> str:
    """One log line (without newline) for one sample."""
    return (
        f"{_stamp(sample.time)} VRAM: {_mb(sample.allocated_mb)} MB (alloc), {_mb(sample.reserved_mb)} MB (reserved), "
        f"{_mb(sample.device_free_mb)} MB free / {_mb(sample.device_total_mb)} MB total"
        f" | process {_mb(sample.process_mb)} MB, non-torch {_mb(sample.non_torch_mb)} MB, "
        f"device used {_mb(sample.device_used_mb)} MB, peak alloc {_mb(sample.max_allocated_mb)} MB, "
        f"host RSS {_mb(sample.host_rss_mb)} MB"
        f" | {_origin(sample.source, sample.pid_visible)} | rank {sample.rank}, step {sample.step}"
    )


def format_summary(peaks: PeakSummary, unix_time: float) -> str:
    """The end-of-run line with one rank's peaks."""
    return (
        f"{_stamp(unix_time)} VRAM PEAKS rank {peaks.rank} over {peaks.samples} samples: "
        f"{_mb(peaks.max_allocated_mb)} MB (alloc), {_mb(peaks.reserved_mb)} MB (reserved), "
        f"process {_mb(peaks.process_mb)} MB, non-torch {_mb(peaks.non_torch_mb)} MB, "
        f"device used {_mb(peaks.device_used_mb)} MB / {_mb(peaks.device_total_mb)} MB total, "
        f"host RSS {_mb(peaks.host_rss_mb)} MB | {_origin(peaks.source, peaks.pid_visible)}"
    )


class MemoryLog:
    """Appends one line per sample to ``path``; usable directly as a :class:`VramSampler` sink."""

    def __init__(self, path: str | os.PathLike, rank: int) -> None:
        self.path = Path(path)
        self.rank = rank
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def __call__(self, sample: VramSample) -> None:
        """Append the line for ``sample``."""
        self._append(format_sample(sample))

    def write_summary(self, peaks: PeakSummary) -> None:
        """Append this rank's end-of-run peak line."""
        self._append(format_summary(peaks, time.time()))

    def _append(self, line: str) -> None:
        fd = open_for_append(self.path)
        try:
            os.write(fd, (line + "\n").encode("utf-8"))
        finally:
            os.close(fd)
