"""``samples/rank<k>.jsonl``: which frames each training micro-batch held (``telemetry.sample_log``).

One JSON line per micro-batch: the epoch (1-based), the optimizer step the micro-batch
belongs to (1-based, global) and the frame paths, in batch order. A resumed run appends to
the file of its rank, so a step can appear twice when a run died after logging it and before
its checkpoint: the checkpoint's step says which lines it covers. Each line is a single
``os.write`` on an ``O_APPEND`` descriptor, so a killed process leaves whole lines only.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path


class SampleLog:
    """Appends one line per training micro-batch to ``path`` (its folder is made on first use)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, epoch: int, step: int, paths: Sequence[str]) -> None:
        """Record that optimizer step ``step`` of epoch ``epoch`` trained on the frames ``paths``."""
        line = json.dumps({"epoch": epoch, "step": step, "paths": list(paths)}) + "\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)

