"""What every suite shares: the measurement record, repeat statistics, the machine's name.

A :class:`Record` is one measurement (a throughput, a step time, a memory figure) with
its median and spread over repeats, the settings it ran with and the ratios derived from
other records of the same run. Records are written to JSON as flat dictionaries.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

# Metrics whose median is also the record's ``images_per_s`` field.
THROUGHPUT_METRICS = ("images_per_s", "samples_per_s")


@dataclass(frozen=True)
class Stats:
    """Median, min and max over repeats; the raw values are kept for anyone who wants more."""

    median: float
    min: float
    max: float
    values: tuple[float, ...]

    @classmethod
    def of(cls, values: list[float] | tuple[float, ...]) -> Stats:
        if not values:
            raise ValueError("no values to summarise: a measurement needs at least one repeat")
        return cls(statistics.median(values), min(values), max(values), tuple(float(v) for v in values))


@dataclass(frozen=True)
class Machine:
    """The hardware and software a run measured."""

    device: str  # GPU name, or the CPU model from /proc/cpuinfo
    device_type: str  # "cuda" or "cpu"
    cpu: str
    cores: int  # cores this process may use
    torch: str
    python: str

    @classmethod
    def detect(cls, device: torch.device) -> Machine:
        cpu = cpu_model()
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu
        return cls(name, device.type, cpu, usable_cores(), torch.__version__, platform.python_version())


@dataclass
class Record:
    """One measurement of one variant of one suite."""

    suite: str
    variant: str
    metric: str  # what median/min/max measure, e.g. "images_per_s", "step_ms", "rss_mb"
    unit: str
    stats: Stats
    machine: Machine
    settings: dict[str, Any] = field(default_factory=dict)
    derived: dict[str, Any] = field(default_factory=dict)  # ratios and splits computed in the same run

    @property
    def images_per_s(self) -> float | None:
        return self.stats.median if self.metric in THROUGHPUT_METRICS else None

    def to_json(self) -> dict[str, Any]:
        return {
            "suite": self.suite, "variant": self.variant, "metric": self.metric, "unit": self.unit,
            "images_per_s": self.images_per_s, "median": self.stats.median, "min": self.stats.min,
            "max": self.stats.max, "repeats": len(self.stats.values), "values": list(self.stats.values),
            "device": self.machine.device, "device_type": self.machine.device_type, "cores": self.machine.cores,
            "torch": self.machine.torch, "settings": self.settings, "derived": self.derived,
        }


def cpu_model() -> str:
    """The CPU model name as /proc/cpuinfo spells it (falls back to ``platform.processor()``)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def usable_cores() -> int:
    """Cores this process may run on (the affinity mask, not the machine's total)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def synchronize(device: torch.device) -> None:
    """Wait for queued device work, so a clock read after it covers that work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    """Seconds ``fn`` takes, device work included."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def ratio(numerator: float, denominator: float) -> float | None:
    """``numerator / denominator`` to 4 significant digits, None when the denominator is not positive."""
    return float(f"{numerator / denominator:.4g}") if denominator > 0 else None

