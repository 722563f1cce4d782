"""A released pinned buffer the pool cannot keep is freed only after its pending copies are done."""

from __future__ import annotations

import gc

from dist_seg.data.buffers import BatchBufferPool


class FakeEvent:
    """Stands in for a CUDA event: pending until ``done`` is set; counts blocking waits."""

    instances: list[FakeEvent] = []

    def __init__(self) -> None:
        self.done = False
        self.waits = 0
        FakeEvent.instances.append(self)

    def synchronize(self) -> None:
        self.waits += 1
        self.done = True

    def query(self) -> bool:
        return self.done


def test_a_dropped_buffer_lives_until_its_fence_completes_and_nobody_blocks():
    FakeEvent.instances.clear()
    pool = BatchBufferPool(1, (2, 2), keep=1, fence=FakeEvent)
    batches = [pool.hand_out(pool.take(), 1) for _ in range(3)]
    del batches
    gc.collect()
    # One kept for reuse, two with no room: alive while their copies may still read them.
    assert pool.free == 1 and pool.draining == 2
    FakeEvent.instances[1].done = True
    pool.take()  # reuses the kept buffer (waiting on its fence) and frees the finished drained one
    assert pool.draining == 1
    assert sum(e.waits for e in FakeEvent.instances) == 1  # only the reuse waited; draining never blocks
    FakeEvent.instances[2].done = True
    pool.hand_out(pool.take(), 1)
    assert pool.draining == 0
