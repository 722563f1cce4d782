"""Preemption notices (SIGTERM from Kubernetes / torchrun, SIGUSR1 from SLURM's ``--signal``, SIGHUP when the
terminal or SSH session of a foreground run goes away) and Ctrl-C.

The handler only records the request; the training loop acts on it at the next step
boundary it agrees on with the other ranks, so every rank saves the same position.
A Ctrl-C (SIGINT) during training is such a request too, so an interrupted run keeps its
progress; a second Ctrl-C raises KeyboardInterrupt at once for a user who will not wait.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from types import FrameType
from typing import Generic, TypeVar

from ..runtime.distributed import DistContext, StopVote

T = TypeVar("T")

PREEMPTION_SIGNALS = tuple(s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGUSR1", None),
                                        getattr(signal, "SIGHUP", None)) if s)
# Under torchrun a Ctrl-C reaches a rank twice within moments (from the terminal and forwarded by
# the agent); only a second press after this long is the user asking to stop at once.
_SECOND_CTRL_C_AFTER_S = 1.0


class PreemptionWatch:
    """Context manager that turns preemption signals and a first Ctrl-C into a flag while it is active."""

    def __init__(self, signals: tuple[int, ...] = (*PREEMPTION_SIGNALS, signal.SIGINT)) -> None:
        self.signals = signals
        self.received: str | None = None
        self._interrupted_at: float | None = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.received is not None

    @property
    def interrupted(self) -> bool:
        """True when the stop was asked for with Ctrl-C (the process should then exit 130, not 0)."""
        return self._interrupted_at is not None

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if signum == signal.SIGINT:
            now = time.monotonic()
            if self._interrupted_at is not None and now - self._interrupted_at > _SECOND_CTRL_C_AFTER_S:
                raise KeyboardInterrupt
            if self._interrupted_at is None:
                self._interrupted_at = now
        self.received = self.received or signal.Signals(signum).name

    def __enter__(self) -> PreemptionWatch:
        # Signal handlers can only be installed from the main thread (tests may train from others).
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()


def stop_message(watch: PreemptionWatch, epoch: int, batch: int) -> str:
    """The log line of a run stopped by a signal at one-based ``epoch``, ``batch`` of it."""
    # Only rank 0 logs, and it may be stopping because another rank (node) was signalled.
    cause = watch.received or "a preemption signal to another rank"
    return f"stopped on {cause} at epoch {epoch}, batch {batch}: resume with training.resume_from_checkpoint: auto"


class Preempted(Exception):
    """A preemption signal arrived during work that has no step boundary to stop at."""

    def __init__(self, signal_name: str) -> None:
        super().__init__(signal_name)
        self.signal_name = signal_name


@contextlib.contextmanager
def preemption_raises(signals: tuple[int, ...] = PREEMPTION_SIGNALS) -> Iterator[None]:
    """While active, a preemption signal raises :class:`Preempted` in the main thread.

    For long work without a step boundary (building the data caches): the exception unwinds
    it within moments, through its cleanup (aborted cache writers, a terminated decode
    pool), instead of the default action killing the process with temporary files left behind.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _raise(signum: int, _frame: FrameType | None) -> None:
        raise Preempted(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, _raise) for sig in signals}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class Stoppable(Generic[T]):
    """Iterates ``batches`` until the ranks agree to stop on a preemption request; owns the votes.

    After each batch for which ``votes_after()`` is true (a step boundary in training, a batch
    every rank has in validation) the ranks vote without stalling the device
    (:class:`~dist_seg.runtime.distributed.StopVote`); iteration ends at the same batch on every
    rank once one of them was signalled, and :attr:`stopped` says so. Leaving the loop early
    (``break``) is fine: the vote in flight is drained either way.
    """

    def __init__(self, batches: Iterable[T], ctx: DistContext, watch: PreemptionWatch | None,
                 votes_after: Callable[[], bool] = lambda: True) -> None:
        self.batches, self.ctx, self.watch, self.votes_after = batches, ctx, watch, votes_after
        self.stopped = False

    def __iter__(self) -> Iterator[T]:
        vote = StopVote(self.ctx)
        try:
            for batch in self.batches:
                yield batch
                if self.watch is not None and self.votes_after() and vote.poll(self.watch.requested):
                    self.stopped = True
                    return
        finally:
            vote.drain()
