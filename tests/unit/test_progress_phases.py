"""Progress after a mid-epoch resume, and the phases outside the training batches in the run's ETA."""

from __future__ import annotations

import io

from dist_seg.telemetry.progress import Progress


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_resumed_epoch_counts_its_batches_from_the_resumed_position():
    stream, clock = io.StringIO(), Clock()
    progress = Progress("log", log_interval=4, stream=stream, clock=clock)
    progress.start_epoch(1, 1, 39, start_batch=13)
    clock.now = 4.0
    progress.update(4, loss=1.0, lr=0.1, images_per_s=2.0)
    progress.end_epoch()
    # 1 s per batch trained in this process: 22 batches left, not 22 + the 13 of the killed process.
    assert stream.getvalue().splitlines() == [
        "epoch 1/1 batch 17/39 | loss 1.0000 | lr 1.00e-01 | img/s 2.0 | eta epoch 0:22, run 0:22"]


def test_phases_print_start_progress_and_duration_and_count_in_the_next_epochs_eta():
    stream, clock = io.StringIO(), Clock()
    progress = Progress("log", log_interval=10, stream=stream, clock=clock)
    progress.start_epoch(1, 2, 10)
    clock.now = 10.0
    progress.update(10, loss=1.0, lr=0.1, images_per_s=1.0)
    progress.end_epoch()
    progress.start_phase("precise BN epoch 1/2", 20)
    for _ in range(20):
        clock.now += 2.0
        progress.phase_step()
    progress.end_phase()
    progress.start_epoch(2, 2, 10)
    clock.now = 55.0
    progress.update(5, loss=1.0, lr=0.1, images_per_s=1.0)
    lines = stream.getvalue().splitlines()
    assert lines[1:4] == ["precise BN epoch 1/2: 20 batch(es)",
                          "precise BN epoch 1/2 batch 10/20 | eta 0:20, run 0:30",
                          "precise BN epoch 1/2: done in 0:40"]
    progress.end_epoch()
    # Epoch 2: 5 s of batches left, then the 40 s that epoch 1 spent after its batches.
    assert stream.getvalue().splitlines()[-1].endswith("| eta epoch 0:05, run 0:45")
