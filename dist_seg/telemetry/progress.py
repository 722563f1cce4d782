"""Console progress for the training loop: a tqdm bar on a terminal, plain lines in a log file.

A progress bar written to a file (a Slurm log, ``nohup``) turns into thousands of
carriage-return fragments, so ``auto`` uses the bar only when the stream is a TTY and
otherwise prints a line every ``log_interval`` batches. Only rank 0 creates one.

Each training line carries an ETA for the epoch (its remaining batches at the epoch's rate
so far) and for the run (the remaining epochs at the last whole epoch's wall time, which
includes validation and checkpointing; before that, at the batch rate plus the time the last
epoch spent after its batches). Every phase outside the training batches (validation,
precise BN, the BN check, visualisations, the final evaluation) shows its own progress: a
bar, or a start line, a line every ``log_interval`` units and a line with its duration.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
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
    device only every few steps), so :meth:`update` takes the window size. Work outside the
    training batches (validation, precise BN, the BN check, visualisations, the final
    evaluation) is a *phase*: :meth:`start_phase`, :meth:`phase_step`, :meth:`end_phase`.
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
        self._epoch = self._epochs = self._steps = 0
        self._done = self._start_batch = self._logged_at = 0
        self._pending: str | None = None
        self._epoch_start: float | None = None
        self._epoch_wall: float | None = None  # wall time of the last whole epoch, start to start
        self._batches_end: float | None = None  # when the current epoch's last batch finished
        self._after_batches: float | None = None  # the last epoch's time after its batches (validation, ...)
        self._phase = ""
        self._phase_unit = "batch"
        self._phase_total = self._phase_done = self._phase_logged_at = 0
        self._phase_start = 0.0

    def start_epoch(self, epoch: int, epochs: int, batches: int, start_batch: int = 0) -> None:
        """Begin epoch ``epoch`` of ``epochs``, of ``batches`` batches, of which ``start_batch`` are done already.

        After a mid-epoch resume the count goes on from ``start_batch`` (``batch 17/39``) and the
        rates and ETAs use only the batches trained in this process.
        """
        self.close()
        now = self._clock()
        if self._epoch_start is not None and self._start_batch == 0 and self._done == self._steps:
            self._epoch_wall = now - self._epoch_start  # only whole epochs predict the next ones
        if self._batches_end is not None:
            self._after_batches = now - self._batches_end
        self._epoch_start, self._batches_end = now, None
        self._epoch, self._epochs, self._steps = epoch, epochs, batches
        self._done = self._logged_at = self._start_batch = start_batch
        self._pending = None
        if self.mode == "bar":
            self._bar = tqdm(total=batches, initial=start_batch, desc=f"epoch {epoch}/{epochs}", file=self.stream,
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

    def _per_epoch(self, per_batch: float) -> float:
        """Wall time of one whole epoch: the last one measured, else its batches plus the last after-batch time."""
        if self._epoch_wall is not None:
            return self._epoch_wall
        return self._steps * per_batch + (self._after_batches or 0.0)

    def _eta(self) -> str:
        """``epoch M:SS, run H:MM:SS``: this process's batch rate, the last epoch's validation etc., whole epochs."""
        elapsed = self._clock() - (self._epoch_start if self._epoch_start is not None else self._clock())
        trained = self._done - self._start_batch
        per_batch = elapsed / trained if trained and elapsed > 0 else float("nan")
        epoch_left = (self._steps - self._done) * per_batch
        run_left = epoch_left + (self._after_batches or 0.0) + (self._epochs - self._epoch) * self._per_epoch(per_batch)
        return f"epoch {format_duration(epoch_left)}, run {format_duration(run_left)}"

    def start_phase(self, name: str, total: int, unit: str = "batch") -> None:
        """Work of ``total`` ``unit``s outside the training batches begins (e.g. ``precise BN``, 50 batches).

        Log mode prints a line at the start, one every ``log_interval`` units with its ETA and
        the run's, and one with the time it took; bar mode draws a bar.
        """
        self.close()
        if self._batches_end is None and self._epoch_start is not None:
            self._batches_end = self._clock()
        self._phase, self._phase_unit, self._phase_total = name, unit, total
        self._phase_done = self._phase_logged_at = 0
        self._phase_start = self._clock()
        if self.mode == "bar":
            self._bar = tqdm(total=total, desc=name, unit=unit, file=self.stream, dynamic_ncols=True, leave=False)
        elif self.mode == "log":
            self._print(f"{name}: {total} {unit}(es)" if unit == "batch" else f"{name}: {total} {unit}(s)")

    @property
    def in_phase(self) -> bool:
        """Whether a phase is open (started and not ended)."""
        return bool(self._phase)

    def phase_step(self, n: int = 1) -> None:
        """``n`` more units of the current phase done."""
        self._phase_done += n
        if self._bar is not None:
            self._bar.update(n)
        elif self.mode == "log" and self._phase_done - self._phase_logged_at >= self.log_interval \
                and self._phase_done < self._phase_total:
            elapsed = self._clock() - self._phase_start
            left = (self._phase_total - self._phase_done) * elapsed / self._phase_done
            line = f"{self._phase} {self._phase_unit} {self._phase_done}/{self._phase_total} | eta {format_duration(left)}"
            if self._epochs and self._epoch < self._epochs:
                trained = self._done - self._start_batch
                now = self._clock()
                ended = self._batches_end if self._batches_end is not None else now
                batches_s = ended - (self._epoch_start if self._epoch_start is not None else now)
                per_batch = batches_s / trained if trained else float("nan")
                line += f", run {format_duration(left + (self._epochs - self._epoch) * self._per_epoch(per_batch))}"
            self._print(line)
            self._phase_logged_at = self._phase_done

    def end_phase(self) -> None:
        """The current phase finished (or stopped): close its bar, say how long it took."""
        self.close()
        if self.mode == "log" and self._phase:
            self._print(f"{self._phase}: done in {format_duration(self._clock() - self._phase_start)}")
        self._phase = ""

    def end_epoch(self) -> None:
        """Close the epoch's bar (or print its last unprinted line)."""
        self.close()
        self._flush_pending()
        self._batches_end = self._clock()

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
