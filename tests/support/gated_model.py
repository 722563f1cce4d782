"""A model that lets a test stop training at an exact step, for signal and failure tests.

Signals and kills only test something when they land while training is under way. Instead
of guessing with sleeps, :class:`GatedNet` holds the chosen ranks inside the ``hold_at``-th
training forward until the test creates ``<gate_dir>/open``; while it waits, the file
``<gate_dir>/held.rank<k>`` holds the process id, so the test knows which process to hit.
Each training forward also records the count in ``<gate_dir>/calls.rank<k>``, so a test can
check afterwards that every rank stopped at the same step.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch
from fixtures_custom_model import LinearPixelNet

# An abandoned gate (the test process died) must not leave workers waiting forever.
MAX_HOLD_S = 300.0


class GatedNet(LinearPixelNet):
    """:class:`LinearPixelNet` (same parameters, same initialisation) with a test-controlled gate.

    ``hold_at`` 0 never holds; ``hold_ranks`` lists the ranks (``RANK`` from torchrun, 0 without
    it) that wait at the gate. Once ``open`` exists the gate never holds again, including in
    workers that torchrun restarts.
    """

    def __init__(self, num_classes: int, gate_dir: str, hold_at: int = 0, hold_ranks: list[int] | None = None) -> None:
        super().__init__(num_classes)
        self.gate_dir = Path(gate_dir)
        self.hold_at = hold_at
        self.rank = int(os.environ.get("RANK", "0"))
        self.holds = self.rank in (hold_ranks if hold_ranks is not None else [0])
        self.calls = 0
        self.gate_dir.mkdir(parents=True, exist_ok=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.calls += 1
            (self.gate_dir / f"calls.rank{self.rank}").write_text(str(self.calls))
            if self.holds and self.calls == self.hold_at:
                self._wait_at_gate()
        return super().forward(x)

    def _wait_at_gate(self) -> None:
        opened = self.gate_dir / "open"
        if opened.exists():
            return
        # Written whole, then renamed: the test reads the pid as soon as the name appears.
        held = self.gate_dir / f"held.rank{self.rank}"
        partial = held.with_name(held.name + ".tmp")
        partial.write_text(str(os.getpid()))
        os.replace(partial, held)
        deadline = time.monotonic() + MAX_HOLD_S
        while not opened.exists():
            if time.monotonic() > deadline:
                raise RuntimeError(f"gate {opened} was never opened")
            time.sleep(0.02)
