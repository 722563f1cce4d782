"""Console progress: a bar on a TTY, log lines otherwise, nothing for none."""

from __future__ import annotations

import io

import pytest

from dist_seg.telemetry.progress import Progress, format_duration, resolve_mode


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


class Clock:
    """A clock the test moves: one second per batch in :func:`run_epoch`."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def run_epoch(progress: Progress, steps: int = 10, window: int = 2, clock: Clock | None = None) -> None:
    progress.start_epoch(2, 80, steps)
    for done in range(window, steps + 1, window):
        if clock is not None:
            clock.now += window
        progress.update(window, loss=0.5, lr=1e-4, images_per_s=300.0, memory_mb=12034.0, step=done)
    progress.end_epoch()


def test_auto_picks_bar_on_a_tty_and_log_otherwise():
    assert resolve_mode("auto", Tty()) == "bar"
    assert resolve_mode("auto", io.StringIO()) == "log"
    assert resolve_mode("bar", io.StringIO()) == "bar"
    with pytest.raises(ValueError):
        resolve_mode("fancy", io.StringIO())


def test_log_mode_prints_every_log_interval_batches_and_the_epochs_last_one():
    stream, clock = io.StringIO(), Clock()
    run_epoch(Progress("auto", log_interval=4, stream=stream, clock=clock), clock=clock)
    lines = stream.getvalue().splitlines()

    # 1 s per batch: the epoch's remaining batches, plus 78 more epochs of 10 batches for the run
    assert lines == [
        "epoch 2/80 batch 4/10 (step 4) | loss 0.5000 | lr 1.00e-04 | img/s 300.0 | mem 12034 MB"
        " | eta epoch 0:06, run 13:06",
        "epoch 2/80 batch 8/10 (step 8) | loss 0.5000 | lr 1.00e-04 | img/s 300.0 | mem 12034 MB"
        " | eta epoch 0:02, run 13:02",
        "epoch 2/80 batch 10/10 (step 10) | loss 0.5000 | lr 1.00e-04 | img/s 300.0 | mem 12034 MB"
        " | eta epoch 0:00, run 13:00",
    ]
    assert "\r" not in stream.getvalue()


def test_log_mode_prints_an_unfinished_epochs_last_window():
    stream, clock = io.StringIO(), Clock()
    progress = Progress("log", log_interval=20, stream=stream, clock=clock)
    progress.start_epoch(1, 3, 100)
    clock.now = 10.0
    progress.update(5, loss=1.0, lr=0.1, images_per_s=10.0)
    progress.end_epoch()
    assert stream.getvalue().splitlines() == [
        "epoch 1/3 batch 5/100 | loss 1.0000 | lr 1.00e-01 | img/s 10.0 | eta epoch 3:10, run 9:50"]


def test_run_eta_uses_the_last_whole_epochs_wall_time():
    """Validation and checkpoints take time between epochs: the run ETA counts whole epochs start to start,
    and this epoch's time after its batches as the last epoch's."""
    stream, clock = io.StringIO(), Clock()
    progress = Progress("log", log_interval=10, stream=stream, clock=clock)
    progress.start_epoch(1, 3, 10)
    clock.now = 10.0
    progress.update(10, loss=1.0, lr=0.1, images_per_s=1.0)
    progress.end_epoch()
    clock.now = 40.0  # 30 s of validation
    progress.start_epoch(2, 3, 10)
    clock.now = 45.0
    progress.update(5, loss=1.0, lr=0.1, images_per_s=1.0)
    progress.end_epoch()
    # 5 s of batches + 30 s of validation + one 40 s epoch
    assert stream.getvalue().splitlines()[-1].endswith("| eta epoch 0:05, run 1:15")


def test_validation_prints_progress_lines_in_log_mode():
    stream, clock = io.StringIO(), Clock()
    progress = Progress("log", log_interval=4, stream=stream, clock=clock)
    progress.start_epoch(3, 5, 2)
    clock.now = 2.0
    progress.update(2, loss=1.0, lr=0.1, images_per_s=1.0)
    progress.end_epoch()
    progress.start_phase("validate epoch 3/5", 10)
    for _ in range(10):
        clock.now += 0.5
        progress.phase_step()
    progress.end_phase()
    # The run's ETA: the phase's rest + two more epochs of 2 s batches (no validation measured yet).
    assert stream.getvalue().splitlines()[1:] == ["validate epoch 3/5: 10 batch(es)",
                                                  "validate epoch 3/5 batch 4/10 | eta 0:03, run 0:07",
                                                  "validate epoch 3/5 batch 8/10 | eta 0:01, run 0:05",
                                                  "validate epoch 3/5: done in 0:05"]


def test_validation_draws_a_bar_on_a_tty():
    stream = Tty()
    progress = Progress("auto", stream=stream)
    progress.start_epoch(1, 2, 5)
    progress.start_phase("validate epoch 1/2", 3)
    for _ in range(3):
        progress.phase_step()
    progress.end_phase()
    assert "validate epoch 1/2" in stream.getvalue() and "0/3" in stream.getvalue()


def test_format_duration():
    assert [format_duration(s) for s in (0, 59.4, 61, 3600 * 2 + 5, float("nan"))] == [
        "0:00", "0:59", "1:01", "2:00:05", "?"]


def test_bar_mode_draws_tqdm_with_the_step_fields():
    stream = Tty()
    run_epoch(Progress("auto", stream=stream))
    out = stream.getvalue()
    assert "epoch 2/80" in out and "10/10" in out and "\r" in out
    assert "loss=0.5000" in out and "img/s=300.0" in out and "mem=12034 MB" in out


def test_none_mode_prints_nothing():
    stream = Tty()
    progress = Progress("none", stream=stream)
    run_epoch(progress)
    assert stream.getvalue() == ""
