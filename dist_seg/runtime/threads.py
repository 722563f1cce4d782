"""How many intra-op threads torch uses on a CPU run (``backend.cpu_threads``).

By default torch starts one thread per core it sees, and the loader's gather threads (or
worker processes) and the other ranks on the node want the same cores: on a small machine
the oversubscribed pool runs several times slower than one that fits. ``auto`` gives torch
the cores this process may use (its CPU affinity) shared among the node's ranks, minus the
loader's workers, and at least one. It also looks at what the host runs right now: cores
that other processes keep busy are not given to torch either, and the summary says so when
that lowered the count (on a 2-core host with ~2 busy threads elsewhere, 2 torch threads
trained at 0.5-1.3 img/s and 1 thread at 5.5-7.9 img/s). It counts the threads running at
start-up (sampled for a fraction of a second), not the 1-minute load average: that average
still holds a run that has just finished (the previous training, a cache build) and would
halve a fresh run's threads on an idle host. Set ``backend.cpu_threads: N`` to choose.
An ``OMP_NUM_THREADS`` set in the
environment is the user's explicit choice and wins over ``auto``.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from ..parallel import usable_cores


@dataclass(frozen=True)
class ThreadChoice:
    """torch's intra-op thread count and why (for the start-up summary)."""

    threads: int
    reason: str

    def describe(self) -> str:
        return f"{self.threads} ({self.reason})"


def busy_elsewhere(samples: int = 5, interval_s: float = 0.02) -> float | None:
    """Threads other processes run right now on the host: the median of a few reads of the running count.

    Linux's ``/proc/loadavg`` gives the running threads at this instant (its fourth field, "R/T"),
    this process's reading thread included; None where there is no such file (other systems).
    """
    counts = []
    for i in range(samples):
        try:
            running = Path("/proc/loadavg").read_text().split()[3].split("/")[0]
        except (OSError, IndexError):
            return None
        counts.append(max(0, int(running) - 1))  # this thread is running while it reads
        if i + 1 < samples:
            time.sleep(interval_s)
    return float(statistics.median(counts))


def choose_cpu_threads(setting: int | Literal["auto"], loader_processes: int, local_processes: int = 1,
                       env: Mapping[str, str] = os.environ, load: float | None = None,
                       cores: int | None = None) -> ThreadChoice:
    """The thread count for ``backend.cpu_threads`` (``auto`` or N), given the loader's worker processes and ranks
    per node; ``auto`` also leaves out the cores other processes keep busy (``load``: threads running
    elsewhere, read by :func:`busy_elsewhere` when None)."""
    if setting != "auto":
        return ThreadChoice(int(setting), "backend.cpu_threads")
    if env.get("OMP_NUM_THREADS", "").strip().isdigit():
        return ThreadChoice(max(1, int(env["OMP_NUM_THREADS"])), "OMP_NUM_THREADS")
    cores = cores if cores is not None else usable_cores()
    share = cores // max(1, local_processes)
    threads = max(1, share - loader_processes)
    ranks = f" / {local_processes} ranks" if local_processes > 1 else ""
    reason = f"auto: {cores} usable cores{ranks} - {loader_processes} loader worker processes"
    load = load if load is not None else busy_elsewhere()
    if load is not None:
        # The node's ranks share what the load leaves idle, like they share the cores.
        idle = max(0, cores - int(load)) // max(1, local_processes)
        if idle < threads:
            reason += (f"; reduced from {threads}: {load:.1f} threads of other processes running on {cores} usable "
                       f"cores leave ~{idle} "
                       "idle, and oversubscribed threads run several times slower; set backend.cpu_threads to "
                       "choose")
            threads = max(1, idle)
    return ThreadChoice(threads, reason)


def apply_compile_threads(local_processes: int = 1) -> int:
    """Inductor's compile worker threads for this rank: the usable cores shared among the node's ranks.

    Every rank compiles at the same time; each one starting a worker per core would
    oversubscribe the node and make the first step (which every collective waits for) slower.
    """
    import torch._inductor.config as inductor_config  # only compiling runs pay for importing Inductor

    threads = max(1, usable_cores() // max(1, local_processes))
    inductor_config.compile_threads = threads
    return threads


def apply_cpu_threads(setting: int | Literal["auto"], loader_processes: int, device: torch.device,
                      local_processes: int = 1) -> ThreadChoice:
    """Set torch's intra-op threads: always for an explicit N, for ``auto`` only on CPU runs (a GPU run keeps torch's default)."""
    if setting == "auto" and device.type != "cpu":
        return ThreadChoice(torch.get_num_threads(), "torch default: the GPU does the work")
    choice = choose_cpu_threads(setting, loader_processes, local_processes)
    torch.set_num_threads(choice.threads)
    return choice
