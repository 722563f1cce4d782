"""What a suite gets to run with: sizes, device, machine, folders, logging, record building."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .common import Machine, Record, Stats
from .data import ensure_dataset
from .sizes import Sizes


@dataclass
class Context:
    """One benchmark run.

    ``scratch`` survives between runs (generated dataset, caches); ``work`` holds this run's
    training outputs and is safe to delete afterwards.
    """

    sizes: Sizes
    device: torch.device
    machine: Machine
    scratch: Path
    work: Path
    log: Callable[[str], None] = print
    footage_root: Path | None = None  # real data for time_to_accuracy; None = its default
    _data_root: Path | None = field(default=None, repr=False)

    def data_root(self) -> Path:
        """The scratch dataset, generated on first use."""
        if self._data_root is None:
            self._data_root = ensure_dataset(self.scratch, self.sizes, self.log)
        return self._data_root

    def suite_dir(self, suite: str) -> Path:
        path = self.work / suite
        path.mkdir(parents=True, exist_ok=True)
        return path

    def record(self, suite: str, variant: str, metric: str, unit: str, values: list[float],
               settings: dict[str, Any] | None = None, derived: dict[str, Any] | None = None) -> Record:
        return Record(suite, variant, metric, unit, Stats.of(values), self.machine, dict(settings or {}),
                      dict(derived or {}))


def quiet(_message: str) -> None:
    """A ``log`` callback that drops messages (library chatter inside timed sections)."""
