"""How many intra-op threads torch uses on a CPU run (``backend.cpu_threads``).

By default torch starts one thread per core it sees, and the loader's gather threads (or
worker processes) and the other ranks on the node want the same cores: on a small machine
the oversubscribed pool runs several times slower than one that fits. ``auto`` gives torch
the cores this process may use (its CPU affinity) shared among the node's ranks, minus the
loader's workers, and at least one. An ``OMP_NUM_THREADS`` set in the environment is the
user's explicit choice and wins over ``auto``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal, Mapping

import torch

from ..parallel import usable_cores


@dataclass(frozen=True)
class ThreadChoice:
    """torch's intra-op thread count and why (for the start-up summary)."""

    threads: int
    reason: str

    def describe(self) -> str:
        return f"{self.threads} ({self.reason})"


def choose_cpu_threads(setting: int | Literal["auto"], loader_processes: int, local_processes: int = 1,
                       env: Mapping[str, str] = os.environ) -> ThreadChoice:
    """The thread count for ``backend.cpu_threads`` (``auto`` or N), given the loader's worker processes and ranks per node."""
    if setting != "auto":
        return ThreadChoice(int(setting), "backend.cpu_threads")
    if env.get("OMP_NUM_THREADS", "").strip().isdigit():
        return ThreadChoice(max(1, int(env["OMP_NUM_THREADS"])), "OMP_NUM_THREADS")
    cores = usable_cores()
    share = cores // max(1, local_processes)
    threads = max(1, share - loader_processes)
    ranks = f" / {local_processes} ranks" if local_processes > 1 else ""
    return ThreadChoice(threads, f"auto: {cores} usable cores{ranks} - {loader_processes} loader worker processes")


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
