"""Training metrics: loss, throughput and data wait per log window, folded into epoch totals.

The per-batch loss is summed on the device and read only when a window closes, so the loop
never waits for the GPU between log points. The epoch totals travel in checkpoints, so an
epoch cut in two by a preemption reports the same numbers as an uninterrupted one.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

import torch

from ..runtime.distributed import DistContext

T = TypeVar("T")


@dataclass(frozen=True)
class WindowStats:
    """One log window, all ranks together."""

    batches: int  # this rank's micro-batches
    loss: float  # mean per micro-batch
    images_per_s: float  # global
    data_wait_frac: float  # share of the window the ranks spent waiting for data, on average


@dataclass
class EpochTotals:
    """The finished windows of the current epoch; the field names are the keys of the checkpoint's ``metrics`` part."""

    epoch_batches: int = 0
    epoch_elapsed_s: float = 0.0
    epoch_loss_total: float = 0.0  # summed over ranks and micro-batches
    epoch_wait_frac: float = 0.0

    def absorb(self, batches: int, elapsed_s: float, loss_total: float, wait_frac: float) -> None:
        """Add one window, weighting the wait fractions by time."""
        wait_s = self.epoch_wait_frac * self.epoch_elapsed_s + wait_frac * elapsed_s
        self.epoch_batches += batches
        self.epoch_elapsed_s += elapsed_s
        self.epoch_loss_total += loss_total
        self.epoch_wait_frac = wait_s / max(self.epoch_elapsed_s, 1e-9)

    def train_loss(self, world_size: int) -> float:
        return self.epoch_loss_total / max(self.epoch_batches * world_size, 1)

    def images_per_s(self, global_batch: int, since: EpochTotals | None = None) -> float:
        """Training throughput of the epoch, or only of what came after ``since`` (the totals a resume loaded)."""
        batches = self.epoch_batches - (since.epoch_batches if since else 0)
        elapsed = self.epoch_elapsed_s - (since.epoch_elapsed_s if since else 0.0)
        return batches * global_batch / max(elapsed, 1e-9)


class TrainMetrics:
    """Windows and epoch totals of one rank; ``global_batch`` is images per micro-batch over all ranks."""

    def __init__(self, ctx: DistContext, global_batch: int) -> None:
        self.ctx = ctx
        self.global_batch = global_batch
        self.epoch = EpochTotals()
        # The epoch totals a resume loaded: trained by an earlier process, not counted in this one's img/s.
        self.resumed: EpochTotals | None = None
        self._loss_sum = torch.zeros((), dtype=torch.float64, device=ctx.device)
        self._open_window()

    def _open_window(self) -> None:
        self._started = time.perf_counter()
        self.window_batches = 0
        self._wait_s = 0.0
        self._loss_sum.zero_()

    def start_epoch(self) -> None:
        """Restart the (empty) open window as the epoch's batches begin.

        Without this the epoch's first window would also time the validation, visualisation
        and checkpoint of the previous epoch (or the run's set-up), and report a fraction of
        the real throughput, next to an honest last window.
        """
        if self.window_batches:
            raise RuntimeError("start_epoch with an open window of trained batches: close it first")
        self._open_window()

    def timed(self, batches: Iterable[T]) -> Iterator[T]:
        """``batches``, counting the time spent waiting for each as data wait."""
        iterator = iter(batches)
        while True:
            start = time.perf_counter()
            try:
                item = next(iterator)
            except StopIteration:
                return
            self._wait_s += time.perf_counter() - start
            yield item

    def add(self, loss: torch.Tensor) -> None:
        """Count one trained micro-batch and its (detached, on-device) loss."""
        self._loss_sum += loss
        self.window_batches += 1

    def close_window(self) -> WindowStats:
        """All-reduce the window over ranks (every rank calls this), fold it into the epoch, open the next."""
        ctx = self.ctx
        totals = torch.stack([self._loss_sum,
                              torch.tensor(float(self.window_batches), dtype=torch.float64, device=ctx.device),
                              torch.tensor(self._wait_s, dtype=torch.float64, device=ctx.device)])
        ctx.all_reduce_sum(totals)
        loss_total, batches, wait_total = totals.tolist()
        elapsed = time.perf_counter() - self._started
        stats = WindowStats(
            batches=self.window_batches, loss=loss_total / max(batches, 1.0),
            images_per_s=self.window_batches * self.global_batch / max(elapsed, 1e-9),
            data_wait_frac=min(1.0, (wait_total / ctx.world_size) / max(elapsed, 1e-9)))
        self.epoch.absorb(self.window_batches, elapsed, loss_total, stats.data_wait_frac)
        self._open_window()
        return stats

    def take_epoch(self) -> EpochTotals:
        """The finished epoch's totals; the next epoch starts from zero."""
        totals, self.epoch = self.epoch, EpochTotals()
        return totals

    def take_resumed(self) -> EpochTotals | None:
        """The totals a resume loaded into the epoch that just ended (None if it started in this process)."""
        resumed, self.resumed = self.resumed, None
        return resumed

    def state_dict(self) -> dict[str, Any]:
        return asdict(self.epoch)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Epoch totals from a checkpoint's ``metrics`` part (zeros where a key is missing)."""
        self.epoch = EpochTotals(**{k: state.get(k, v) for k, v in asdict(EpochTotals()).items()})
        self.resumed = EpochTotals(**asdict(self.epoch)) if self.epoch.epoch_batches else None
