"""A process-pool map with a progress bar, for CPU-bound work over many files (decoding frames)."""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")
R = TypeVar("R")


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _worker_signals() -> None:
    # Forked workers inherit the parent's SIGTERM handler, which may raise to stop the parent
    # cleanly; a worker just ends (the parent terminates the pool while it unwinds). A Ctrl-C
    # reaches every process of the terminal's group: the parent's KeyboardInterrupt terminates
    # the pool, so workers ignore it rather than each printing a traceback.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def map_in_pool(fn: Callable[[T], R], items: Sequence[T], *, workers: int, desc: str,
                progress: bool) -> Iterator[R]:
    """``fn`` over ``items`` in a process pool, results in input order, with a progress bar.

    Runs inline when one process suffices, so small jobs pay no pool start-up.
    """
    bar = tqdm(total=len(items), desc=desc, unit="frame", disable=not progress, dynamic_ncols=True)
    workers = min(workers, len(items))
    try:
        if workers <= 1:
            for item in items:
                yield fn(item)
                bar.update()
            return
        # Small chunks keep the bar moving and the cores balanced; large ones cut IPC.
        chunksize = max(1, min(16, len(items) // (workers * 4)))
        with multiprocessing.get_context().Pool(workers, initializer=_worker_signals) as pool:
            for result in pool.imap(fn, items, chunksize=chunksize):
                yield result
                bar.update()
    finally:
        bar.close()
