"""Console progress for the training loop: a tqdm bar on a terminal, plain lines in a log file.

A progress bar written to a file (a Slurm log, ``nohup``) turns into thousands of
carriage-return fragments, so ``auto`` uses the bar only when the stream is a TTY and
otherwise prints a line every ``log_interval`` batches. Only rank 0 creates one.

Each training line carries an ETA for the epoch (its remaining batches at the epoch's rate
so far) and for the run (the remaining epochs at the last whole epoch's wall time, which
includes validation and checkpointing; before that, at the batch rate). Validation shows
its own progress: a bar, or a line every ``log_interval`` batches.
"""

from __future__ import annotations

import sys
import time
from typing import Callable, Literal, TextIO

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


def format_duration(seconds: float) -> str:
    """``M:SS`` or ``H:MM:SS`` (``?`` when unknown)."""
    if not seconds >= 0 or seconds == float("inf"):
        return "?"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Progress:
    """Console output for the training loop in one of three styles (bar, log lines, nothing).

    The trainer reports progress in windows of ``n`` batches (it reads the loss from the
    device only every few steps), so :meth:`update` takes the window size.
    """

    def __init__(self, mode: ProgressMode = "auto", log_interval: int = 20, stream: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if log_interval < 1:
            raise ValueError(f"log_interval must be >= 1, got {log_interval}")
        self.stream = stream if stream is not None else sys.stdout
        self.mode = resolve_mode(mode, self.stream)
        self.log_interval = log_interval
        self._clock = clock
        self._bar: tqdm | None = None
        self._epoch = self._epochs = self._steps = self._batches_per_epoch = 0
        self._done = self._logged_at = 0
        self._pending: str | None = None
        self._epoch_start: float | None = None
        self._epoch_wall: float | None = None  # wall time of the last whole epoch, start to start
        self._val_total = self._val_done = self._val_logged_at = 0

    def start_epoch(self, epoch: int, epochs: int, steps: int, batches_per_epoch: int | None = None) -> None:
        """Begin epoch ``epoch`` of ``epochs`` with ``steps`` batches to go (of ``batches_per_epoch``, default ``steps``)."""
        self.close()
        now = self._clock()
        if self._epoch_start is not None and self._steps == self._batches_per_epoch:
            self._epoch_wall = now - self._epoch_start  # only whole epochs predict the next ones
        self._epoch_start = now
        self._epoch, self._epochs, self._steps = epoch, epochs, steps
        self._batches_per_epoch = batches_per_epoch if batches_per_epoch is not None else steps
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
        fields["eta"] = self._eta()
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

    def _eta(self) -> str:
        """``epoch M:SS, run H:MM:SS`` from the epoch's batch rate and the last whole epoch's wall time."""
        elapsed = self._clock() - (self._epoch_start if self._epoch_start is not None else self._clock())
        per_batch = elapsed / self._done if self._done and elapsed > 0 else float("nan")
        epoch_left = (self._steps - self._done) * per_batch
        per_epoch = self._epoch_wall if self._epoch_wall is not None else self._batches_per_epoch * per_batch
        run_left = epoch_left + (self._epochs - self._epoch) * per_epoch
        return f"epoch {format_duration(epoch_left)}, run {format_duration(run_left)}"

    def start_validation(self, batches: int) -> None:
        """Validation of ``batches`` batches (this rank's shard) begins."""
        self.close()
        self._val_total, self._val_done, self._val_logged_at = batches, 0, 0
        self._val_start = self._clock()
        if self.mode == "bar":
            self._bar = tqdm(total=batches, desc=f"validate {self._epoch}/{self._epochs}", file=self.stream,
                             dynamic_ncols=True, leave=False)

    def validation_step(self, n: int = 1) -> None:
        """``n`` more validation batches done (a line every ``log_interval`` batches in log mode)."""
        self._val_done += n
        if self._bar is not None:
            self._bar.update(n)
        elif self.mode == "log" and self._val_done - self._val_logged_at >= self.log_interval \
                and self._val_done < self._val_total:
            elapsed = self._clock() - self._val_start
            left = (self._val_total - self._val_done) * elapsed / self._val_done
            self._print(f"validate epoch {self._epoch}/{self._epochs} batch {self._val_done}/{self._val_total} "
                        f"| eta {format_duration(left)}")
            self._val_logged_at = self._val_done

    def end_validation(self) -> None:
        """Validation finished (or stopped): close its bar."""
        self.close()

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
