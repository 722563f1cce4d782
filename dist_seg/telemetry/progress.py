"""Console progress for the training loop: a tqdm bar on a terminal, plain lines in a log file.

A progress bar written to a file (a Slurm log, ``nohup``) turns into thousands of
carriage-return fragments, so ``auto`` uses the bar only when the stream is a TTY and
otherwise prints a line every ``log_interval`` batches. Only rank 0 creates one.
"""

from __future__ import annotations

import sys
from typing import Literal, TextIO

from tqdm import tqdm

ProgressMode = Literal["auto", "bar", "log", "none"]


def resolve_mode(mode: ProgressMode, stream: TextIO) -> Literal["bar", "log", "none"]:
    """``auto`` becomes ``bar`` on a terminal and ``log`` otherwise."""
    if mode not in ("auto", "bar", "log", "none"):
        raise ValueError(f"progress mode must be auto, bar, log or none, got {mode!r}")
    if mode == "auto":
        return "bar" if stream.isatty() else "log"
    return mode


def _step_fields(loss: float, lr: float, images_per_s: float, memory_mb: float | None) -> dict[str, str]:
    fields = {"loss": f"{loss:.4f}", "lr": f"{lr:.2e}", "img/s": f"{images_per_s:.1f}"}
    if memory_mb is not None:
        fields["mem"] = f"{memory_mb:.0f} MB"
    return fields


class Progress:
    """Console output for the training loop in one of three styles (bar, log lines, nothing).

    The trainer reports progress in windows of ``n`` batches (it reads the loss from the
    device only every few steps), so :meth:`update` takes the window size.
    """

    def __init__(self, mode: ProgressMode = "auto", log_interval: int = 20, stream: TextIO | None = None) -> None:
        if log_interval < 1:
            raise ValueError(f"log_interval must be >= 1, got {log_interval}")
        self.stream = stream if stream is not None else sys.stdout
        self.mode = resolve_mode(mode, self.stream)
        self.log_interval = log_interval
        self._bar: tqdm | None = None
        self._epoch = self._epochs = self._steps = 0
        self._done = self._logged_at = 0
        self._pending: str | None = None

    def start_epoch(self, epoch: int, epochs: int, steps: int) -> None:
        """Begin epoch ``epoch`` of ``epochs``, ``steps`` batches long."""
        self.close()
        self._epoch, self._epochs, self._steps = epoch, epochs, steps
        self._done = self._logged_at = 0
        self._pending = None
        if self.mode == "bar":
            self._bar = tqdm(total=steps, desc=f"epoch {epoch}/{epochs}", file=self.stream,
                             dynamic_ncols=True, leave=False)

    def update(self, n: int = 1, *, loss: float, lr: float, images_per_s: float,
               memory_mb: float | None = None, step: int | None = None) -> None:
        """``n`` more batches done; loss, learning rate, throughput and GPU memory as of now.

        In log mode a line is printed once at least ``log_interval`` batches passed since
        the previous line, and for the epoch's last batch.
        """
        self._done += n
        fields = _step_fields(loss, lr, images_per_s, memory_mb)
        if self._bar is not None:
            self._bar.update(n)
            # Redraw now: calls come once per log window, so tqdm's rate limit would hide them.
            self._bar.set_postfix(fields)
        elif self.mode == "log":
            where = f"epoch {self._epoch}/{self._epochs} batch {self._done}/{self._steps}"
            if step is not None:
                where += f" (step {step})"
            self._pending = where + " | " + " | ".join(f"{k} {v}" for k, v in fields.items())
            if self._done - self._logged_at >= self.log_interval or self._done >= self._steps:
                self._flush_pending()

    def end_epoch(self) -> None:
        """Close the epoch's bar (or print its last unprinted line)."""
        self.close()
        self._flush_pending()

    def close(self) -> None:
        """Close an open bar."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def _flush_pending(self) -> None:
        if self._pending is not None:
            self._print(self._pending)
            self._pending, self._logged_at = None, self._done

    def _print(self, line: str) -> None:
        print(line, file=self.stream, flush=True)
