"""Console progress: a bar on a TTY, log lines otherwise, nothing for none."""

from __future__ import annotations

import io

import pytest

from dist_seg.telemetry.progress import Progress, resolve_mode


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def run_epoch(progress: Progress, steps: int = 10, window: int = 2) -> None:
    progress.start_epoch(2, 80, steps)
    for done in range(window, steps + 1, window):
        progress.update(window, loss=0.5, lr=1e-4, images_per_s=300.0, memory_mb=12034.0, step=done)
    progress.end_epoch()


def test_auto_picks_bar_on_a_tty_and_log_otherwise():
    assert resolve_mode("auto", Tty()) == "bar"
    assert resolve_mode("auto", io.StringIO()) == "log"
    assert resolve_mode("bar", io.StringIO()) == "bar"
    with pytest.raises(ValueError):
        resolve_mode("fancy", io.StringIO())


def test_log_mode_prints_every_log_interval_batches_and_the_epochs_last_one():
    stream = io.StringIO()
    run_epoch(Progress("auto", log_interval=4, stream=stream))
    lines = stream.getvalue().splitlines()

    assert lines == [
        "epoch 2/80 batch 4/10 (step 4) | loss 0.5000 | lr 1.00e-04 | img/s 300.0 | mem 12034 MB",
        "epoch 2/80 batch 8/10 (step 8) | loss 0.5000 | lr 1.00e-04 | img/s 300.0 | mem 12034 MB",
        "epoch 2/80 batch 10/10 (step 10) | loss 0.5000 | lr 1.00e-04 | img/s 300.0 | mem 12034 MB",
    ]
    assert "\r" not in stream.getvalue()


def test_log_mode_prints_an_unfinished_epochs_last_window():
    stream = io.StringIO()
    progress = Progress("log", log_interval=20, stream=stream)
    progress.start_epoch(1, 3, 100)
    progress.update(5, loss=1.0, lr=0.1, images_per_s=10.0)
    progress.end_epoch()
    assert stream.getvalue().splitlines() == ["epoch 1/3 batch 5/100 | loss 1.0000 | lr 1.00e-01 | img/s 10.0"]


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
