"""Standalone per-process GPU memory sampler (replaces the original Windows PowerShell script).

    python -m dist_seg.telemetry.gpu_proc_sampler --duration 60 --interval 1 --out gpu_proc_usage.csv

Writes one CSV row per process per GPU per sample, for every process on every GPU the driver (NVML or AMD SMI)
lists, training or not. The CSV is an incremental log rather than a file written atomically: each sample's
rows are written and flushed together, so it can be read while sampling goes on and holds whole samples if the
sampler is killed. Ctrl-C stops it cleanly. Exit status 1 (with the reason) when no GPU library or device is
available.
"""

from __future__ import annotations

import argparse
import csv
import io
import itertools
import math
import sys
import time
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path

import psutil

from .gpu import BACKEND_NAMES, BackendUnavailable, GpuBackend, candidates, open_first
from .gpu.base import GpuDevice

COLUMNS = ("timestamp", "gpu_index", "gpu_uuid", "pid", "process_name", "used_mb", "device_used_mb", "device_total_mb")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        prog="python -m dist_seg.telemetry.gpu_proc_sampler",
        description="Sample per-process GPU memory (NVIDIA via NVML, AMD via AMD SMI) into a CSV file.")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds to sample; 0 = until Ctrl-C (default 60)")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between samples (default 1)")
    parser.add_argument("--out", type=Path, default=Path("gpu_proc_usage.csv"), help="CSV file to write")
    parser.add_argument("--backend", choices=("auto", *BACKEND_NAMES), default="auto",
                        help=f"driver library; auto tries {', then '.join(BACKEND_NAMES)}")
    args = parser.parse_args(argv)
    if args.interval <= 0:
        parser.error("--interval must be positive")
    if args.duration < 0:
        parser.error("--duration must be >= 0")
    return args


def process_name(pid: int) -> str:
    """The process's name, or ``unknown`` once it exited (or lives in another PID namespace)."""
    try:
        return psutil.Process(pid).name()
    except (psutil.Error, OSError):
        return "unknown"


def _mb(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}"


def sample_rows(backend: GpuBackend, devices: Iterable[GpuDevice], stamp: str) -> list[tuple[str, ...]]:
    """One CSV row per process per device at this instant."""
    rows = []
    for device in devices:
        reading = backend.read(device)
        index = "" if device.index is None else str(device.index)
        for proc in reading.processes or ():
            rows.append((stamp, index, device.uuid or "", str(proc.pid), process_name(proc.pid),
                         _mb(proc.used_mb), _mb(reading.used_mb), _mb(reading.total_mb)))
    return rows


def _csv_text(rows: Iterable[Sequence[str]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue()


def run(backend: GpuBackend, out: Path, duration: float, interval: float) -> tuple[int, int]:
    """Sample until ``duration`` elapsed (forever if 0) or Ctrl-C; returns (samples, rows) written."""
    devices = backend.devices()
    if not devices:
        raise BackendUnavailable(f"{backend.name} sees no GPU")
    ticks = itertools.count() if duration == 0 else range(max(1, math.ceil(duration / interval - 1e-9)))
    samples = rows_written = 0
    start = time.monotonic()
    with open(out, "w", newline="", encoding="utf-8") as fh:
        fh.write(_csv_text([COLUMNS]))
        fh.flush()
        try:
            for tick in ticks:
                # Sleep to an absolute schedule so slow driver calls do not stretch the interval.
                time.sleep(max(0.0, start + tick * interval - time.monotonic()))
                rows = sample_rows(backend, devices, datetime.now().isoformat(timespec="milliseconds"))
                fh.write(_csv_text(rows))  # one write per sample: a reader never sees half a sample
                fh.flush()
                samples += 1
                rows_written += len(rows)
        except KeyboardInterrupt:
            print("interrupted; stopping", file=sys.stderr)
    return samples, rows_written


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = parse_args(argv)
    try:
        # No torch here, so no vendor hint: the sampler watches whatever GPUs the machine has.
        backend = open_first(candidates(args.backend), lambda message: print(message, file=sys.stderr))
    except BackendUnavailable as exc:
        print(f"gpu_proc_sampler: {exc}", file=sys.stderr)
        return 1
    try:
        samples, rows = run(backend, args.out, args.duration, args.interval)
    except BackendUnavailable as exc:
        print(f"gpu_proc_sampler: {exc}", file=sys.stderr)
        return 1
    finally:
        backend.close()
    print(f"wrote {rows} rows from {samples} samples ({backend.name}) to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
