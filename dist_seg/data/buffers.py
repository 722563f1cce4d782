"""Batch buffers that are reused instead of allocated, and come back once nobody looks at them.

A fresh 8 MiB buffer per batch costs more than filling it: every 4 KiB page faults and
is zeroed on first write (benchmarks/RESULTS.md measures the gather from the cache at
~7x slower into fresh memory than into reused memory). :class:`BatchBufferPool` keeps
filled-and-released buffers and hands them out again.

A buffer is released when the last tensor viewing it is gone, not at some later step
of the loop: the tensors handed out are built with :func:`torch.from_numpy` on a numpy
view made for that hand-out, so their storage holds that view, and a finaliser on the
view returns the buffer. Slicing, ``.view()``, ``.numpy()`` or keeping a batch for later
all keep the buffer out of the pool, so a batch is never overwritten while anyone can
still read it.

With pinned buffers feeding a GPU, "nobody looks at it" is not enough: a
``non_blocking`` host-to-device copy may still be reading the buffer after the tensor is
dropped. The pool then records a fence (a CUDA event on the current stream) at release
and waits for it before handing the buffer out again. A released buffer the pool has no
room for is not freed while its fence is pending either (the pinned allocator could hand
its memory to a new tensor under a running copy): it waits in a drain list, checked without
blocking at every take and release, and is freed once its copies are done.
"""

from __future__ import annotations

import math
import threading
import weakref
from collections.abc import Callable
from typing import Protocol

import numpy as np
import torch


class Fence(Protocol):
    """Something recorded when a buffer is released and waited on before its reuse or its freeing."""

    def synchronize(self) -> None: ...

    def query(self) -> bool: ...


def cuda_copy_fence(device: torch.device) -> Callable[[], Fence]:
    """A fence factory for buffers feeding ``device``: an event on that device's current stream.

    The event completes once every copy queued on the stream before the release is done. It is a
    blocking-sync event: a loader thread waiting on it sleeps instead of spinning on a core the
    training thread needs.
    """
    def record() -> Fence:
        event = torch.cuda.Event(blocking=True)
        event.record(torch.cuda.current_stream(device))
        return event

    return record


class _Buffer:
    """One batch's bytes: ``capacity`` images followed by ``capacity`` masks."""

    __slots__ = ("flat", "fence")

    def __init__(self, flat: np.ndarray) -> None:
        self.flat = flat
        self.fence: Fence | None = None


class BatchBufferPool:
    """Reusable uint8 buffers for batches of up to ``capacity`` images ``[3, H, W]`` and masks ``[H, W]``.

    Thread-safe. At most ``keep`` released buffers are kept for reuse; a pool that runs
    dry allocates a new buffer, so a consumer holding on to many batches costs memory,
    never a deadlock. ``pin`` allocates page-locked memory (for fast, asynchronous copies
    to a GPU); ``fence`` is called at each release and its result waited on before the
    buffer is reused (see :func:`cuda_copy_fence`). A buffer is allocated by whichever
    thread takes it from a dry pool: with ``pin``, that thread must have the training
    device current, or CUDA creates a context on device 0 for it.
    """

    def __init__(self, capacity: int, size: tuple[int, int], *, keep: int, pin: bool = False,
                 fence: Callable[[], Fence] | None = None) -> None:
        if capacity < 1 or keep < 0:
            raise ValueError(f"a batch buffer pool needs capacity >= 1 and keep >= 0, got {capacity} and {keep}")
        self.capacity, self.keep, self.pin, self.fence = capacity, keep, pin, fence
        self.image_bytes = 3 * math.prod(size)
        self.mask_bytes = math.prod(size)
        self.size = tuple(size)
        self._free: list[_Buffer] = []
        self._draining: list[_Buffer] = []  # released, no room to keep, fence still pending
        # Reentrant: a garbage collection inside a locked section can run a finaliser,
        # which releases a buffer from the same thread.
        self._lock = threading.RLock()
        self.allocated = 0  # buffers ever allocated: stays small when buffers are reused

    @property
    def buffer_bytes(self) -> int:
        """Size of one buffer: ``capacity`` images and masks."""
        return self.capacity * (self.image_bytes + self.mask_bytes)

    def _new_buffer(self) -> _Buffer:
        # A numpy view of a torch tensor keeps the tensor (and a pinned allocation) alive.
        flat = torch.empty(self.buffer_bytes, dtype=torch.uint8, pin_memory=self.pin).numpy()
        with self._lock:
            self.allocated += 1
        return _Buffer(flat)

    def take(self) -> _Buffer:
        """A buffer for the caller alone until it is handed out and released again."""
        with self._lock:
            buffer = self._free.pop() if self._free else None
            self._drain()
        if buffer is None:
            return self._new_buffer()
        if buffer.fence is not None:
            buffer.fence.synchronize()
            buffer.fence = None
        return buffer

    def arrays(self, buffer: _Buffer) -> tuple[np.ndarray, np.ndarray]:
        """Writable ``[capacity, 3, H, W]`` image and ``[capacity, H, W]`` mask arrays over ``buffer``."""
        split = self.capacity * self.image_bytes
        images = buffer.flat[:split].reshape(self.capacity, 3, *self.size)
        masks = buffer.flat[split:].reshape(self.capacity, *self.size)
        return images, masks

    def hand_out(self, buffer: _Buffer, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Tensors of the first ``count`` images and masks; ``buffer`` returns to the pool when both are gone."""
        owner = buffer.flat.view()  # held by the tensors' storage, and by nothing else
        finaliser = weakref.finalize(owner, self._release, buffer)
        finaliser.atexit = False
        whole = torch.from_numpy(owner)
        split = self.capacity * self.image_bytes
        images = whole[: count * self.image_bytes].view(count, 3, *self.size)
        masks = whole[split: split + count * self.mask_bytes].view(count, *self.size)
        return images, masks

    def _release(self, buffer: _Buffer) -> None:
        if self.fence is not None:
            buffer.fence = self.fence()
        with self._lock:
            if len(self._free) < self.keep:
                self._free.append(buffer)
            elif buffer.fence is not None:
                self._draining.append(buffer)
            self._drain()

    def _drain(self) -> None:
        """Free (by forgetting) the drained buffers whose copies are done; never blocks. Call with the lock held."""
        self._draining = [buffer for buffer in self._draining if not buffer.fence.query()]

    @property
    def draining(self) -> int:
        """Released buffers kept alive only until their pending copies finish."""
        with self._lock:
            return len(self._draining)

    @property
    def free(self) -> int:
        """Released buffers waiting for reuse."""
        with self._lock:
            return len(self._free)
