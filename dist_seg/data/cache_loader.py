"""The loader for a full cache: batches gathered by threads into reused buffers.

When image and mask both come from the memory-mapped cache, serving a batch is one copy
of its bytes and nothing else. Worker processes would then spend more on handing the
batch over (a fresh shared-memory segment per batch, every page faulting, a file
descriptor passed per tensor) than on the copy itself; threads share the process, numpy
releases the GIL while it copies, and a :class:`~dist_seg.data.buffers.BatchBufferPool`
removes the allocation. ``benchmarks/RESULTS.md`` has the measurements.

:class:`CacheLoader` is a drop-in for the DataLoader the trainer would otherwise use:
same sampler, same batches in the same order, same :class:`~dist_seg.data.dataset.Batch`
records.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import torch
from torch.utils.data import BatchSampler, Sampler

from .buffers import BatchBufferPool, cuda_copy_fence
from .dataset import Batch, CachedDataset


class SampledBatches:
    """What a loader driven by a ``batch_sampler`` shows of it: the sampler, the batch size, the length."""

    batch_sampler: BatchSampler

    @property
    def sampler(self) -> Sampler[int]:
        """The index sampler (what :func:`~dist_seg.data.loader.set_epoch` reshuffles)."""
        return self.batch_sampler.sampler

    @property
    def batch_size(self) -> int:
        return self.batch_sampler.batch_size

    def __len__(self) -> int:
        return len(self.batch_sampler)


class CacheLoader(SampledBatches):
    """Iterates batches of a :class:`CachedDataset` that holds images, in ``batch_sampler``'s order.

    ``threads`` gather batches ahead of the consumer (``threads * prefetch`` at most in
    flight); with ``threads == 0`` the consumer's own thread gathers each batch when asked.
    With ``pin_device`` (a CUDA device) batches are gathered straight into page-locked
    buffers, which wait for the device's copies before reuse (see :mod:`dist_seg.data.buffers`).
    """

    def __init__(self, dataset: CachedDataset, batch_sampler: BatchSampler, *, threads: int, prefetch: int,
                 pin_device: torch.device | None = None) -> None:
        if not dataset.holds_images:
            raise ValueError("CacheLoader serves caches that hold images; decode images with a DataLoader")
        if threads < 0 or prefetch < 1:
            raise ValueError(f"CacheLoader needs threads >= 0 and prefetch >= 1, got {threads} and {prefetch}")
        self.dataset, self.batch_sampler = dataset, batch_sampler
        self.threads, self.pin_device = threads, pin_device
        self.lookahead = threads * prefetch
        # No batch holds more frames than the sampler gives (a val_batch_size above the shard's
        # length must not allocate room for frames that do not exist).
        capacity = max(1, min(batch_sampler.batch_size, len(batch_sampler.sampler)))
        # The batches in flight, plus the one the consumer is using and the one before it.
        self.pool = BatchBufferPool(capacity, dataset.size, keep=self.lookahead + 2,
                                    pin=pin_device is not None,
                                    fence=cuda_copy_fence(pin_device) if pin_device is not None else None)
        self._executor: ThreadPoolExecutor | None = None

    @property
    def pin_memory(self) -> bool:
        """Whether batches are gathered into page-locked memory."""
        return self.pin_device is not None


    def gather(self, indices: Sequence[int]) -> Batch:
        """One batch, copied from the cache into a pooled buffer."""
        buffer = self.pool.take()
        images, masks = self.pool.arrays(buffer)
        paths = self.dataset.gather(indices, images, masks)
        return Batch(*self.pool.hand_out(buffer, len(indices)), paths)

    def __iter__(self) -> Iterator[Batch]:
        if self.threads == 0:
            return map(self.gather, self.batch_sampler)
        return self._ahead()

    def _ahead(self) -> Iterator[Batch]:
        if self._executor is None:
            # Gather threads allocate pinned buffers: with the training device current, as
            # the DataLoader's pin-memory thread does, or CUDA opens a context on device 0.
            initializer, initargs = ((torch.cuda.set_device, (self.pin_device,)) if self.pin_device is not None
                                     else (None, ()))
            self._executor = ThreadPoolExecutor(self.threads, thread_name_prefix="dist_seg-gather",
                                                initializer=initializer, initargs=initargs)
        pending: collections.deque[Future[Batch]] = collections.deque()
        try:
            for indices in self.batch_sampler:
                pending.append(self._executor.submit(self.gather, indices))
                if len(pending) > self.lookahead:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            # An abandoned epoch (islice, an exception, a stop): batches not started are
            # dropped; those being gathered finish and their buffers go back to the pool.
            for future in pending:
                future.cancel()

    def close(self) -> None:
        """Stop the gather threads (they are idle between epochs; this frees them for good)."""
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    def __del__(self) -> None:
        if getattr(self, "_executor", None) is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    def describe(self) -> str:
        """One line for the log: how batches are served."""
        where = f"{self.threads} gather thread{'' if self.threads == 1 else 's'}" if self.threads else "the main thread"
        memory = "pinned" if self.pin_memory else "reused"
        return f"full cache served by {where} into {memory} batch buffers (no worker processes)"
