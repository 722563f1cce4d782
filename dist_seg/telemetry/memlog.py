"""``memory_diagnostics.log``: one human-readable line per VRAM sample, peaks at the end.

Every line keeps the original pipeline's ``VRAM: X MB (alloc), Y MB (reserved), Z MB free /
T MB total`` text, so existing greps keep working, and adds the driver's per-process figure,
the part outside PyTorch, host RSS, where the numbers came from, the rank and the step.
All ranks append to the same file: each line is a single ``os.write`` on an ``O_APPEND``
descriptor, which the kernel does not interleave with other writers on a local filesystem.
The file is opened per line (once a second at most), so there is nothing to close.

A rank without GPU figures (a CPU run) writes only its host RSS, one line per
:data:`HOST_ONLY_INTERVAL_S`, instead of a line of ``n/a`` every sample. The file is capped
at :data:`MAX_LOG_BYTES` across restarts: rank 0 moves a larger one to
``memory_diagnostics.log.1`` (replacing the previous one) and starts a new file.
"""

from __future__ import annotations

import os
import time
from datetime import datetime
from pathlib import Path

from ..paths import open_for_append
from .vram import PeakSummary, VramSample

FILE_NAME = "memory_diagnostics.log"
#: Seconds between host-only lines (samples without GPU figures).
HOST_ONLY_INTERVAL_S = 60.0
#: Size at which rank 0 moves the log to ``<name>.1`` and starts a new one (at start-up and while appending).
MAX_LOG_BYTES = 10 * 2**20

def _mb(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def _origin(source: str, pid_visible: bool) -> str:
    if source == "none":
        return "source none"
    return f"source {source}, " + ("own PID visible" if pid_visible else "own PID not visible: device-level")


def _stamp(unix_time: float) -> str:
    return datetime.fromtimestamp(unix_time).isoformat(timespec="milliseconds")


def has_device_figures(sample: VramSample) -> bool:
    """Whether the sample knows anything about a GPU (a CPU rank's samples know only the host RSS)."""
    return any(v is not None for v in (sample.allocated_mb, sample.reserved_mb, sample.device_total_mb,
                                       sample.process_mb))


def format_sample(sample: VramSample) -> str:
    """One log line (without newline) for one sample: the VRAM line, or the host line without GPU figures."""
    if not has_device_figures(sample):
        return f"{_stamp(sample.time)} host RSS: {_mb(sample.host_rss_mb)} MB | rank {sample.rank}, step {sample.step}"
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

    def __init__(self, path: str | os.PathLike, rank: int, max_bytes: int = MAX_LOG_BYTES,
                 host_interval_s: float = HOST_ONLY_INTERVAL_S) -> None:
        self.path = Path(path)
        self.rank = rank
        self.max_bytes = max_bytes
        self.host_interval_s = host_interval_s
        self._last_host_line: float | None = None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._rotate_if_full()

    def __call__(self, sample: VramSample) -> None:
        """Append the line for ``sample`` (host-only samples once per ``host_interval_s``)."""
        if not has_device_figures(sample):
            if self._last_host_line is not None and sample.time - self._last_host_line < self.host_interval_s:
                return
            self._last_host_line = sample.time
        self._append(format_sample(sample))
        self._rotate_if_full()

    def _rotate_if_full(self) -> None:
        """Rank 0 moves a log past ``max_bytes`` to ``<name>.1``; the other ranks' next lines start the new file."""
        if self.rank != 0:
            return
        try:
            if self.path.stat().st_size > self.max_bytes:
                os.replace(self.path, self.path.with_name(self.path.name + ".1"))
        except FileNotFoundError:
            pass

    def write_summary(self, peaks: PeakSummary) -> None:
        """Append this rank's end-of-run peak line."""
        self._append(format_summary(peaks, time.time()))

    def _append(self, line: str) -> None:
        fd = open_for_append(self.path)
        try:
            os.write(fd, (line + "\n").encode("utf-8"))
        finally:
            os.close(fd)
