"""The training cache held in device memory: batches gathered on the device by index.

With ``dataset.cache_on_device`` the uint8 frames and masks of the training split are
copied to the device once; each batch is then an ``index_select`` there. No batch
crosses PCIe and no host thread copies bytes. The batch sampler is the host loader's, so
the order (and hence the augmentation drawn per batch) is exactly the host path's.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import psutil
import torch
from torch.utils.data import BatchSampler

from ..errors import ConfigError
from .cache_loader import SampledBatches
from .dataset import Batch, CachedDataset

# Share of the free device memory the cache may take: the rest is for training.
MAX_FREE_SHARE = 0.5
# Frames copied per chunk while filling the device cache (bounds the host staging memory).
FILL_CHUNK = 256


def free_device_bytes(device: torch.device) -> int:
    """Free memory of ``device`` in bytes (the host's available memory for the CPU)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return psutil.virtual_memory().available


class DeviceCacheLoader(SampledBatches):
    """Iterates batches of ``dataset`` in ``batch_sampler``'s order, gathered from a copy of the cache on ``device``."""

    def __init__(self, dataset: CachedDataset, batch_sampler: BatchSampler, device: torch.device, *,
                 free_bytes: Callable[[torch.device], int] = free_device_bytes) -> None:
        if not dataset.holds_images:
            raise ConfigError("dataset.cache_on_device needs a cache that holds images (dataset.cache_images: true)")
        frames, size = len(dataset), tuple(dataset.size)
        needed = frames * 4 * math.prod(size)
        free = free_bytes(device)
        if needed > MAX_FREE_SHARE * free:
            raise ConfigError(
                f"dataset.cache_on_device: the training cache ({frames} frames at {size[0]}x{size[1]}) needs "
                f"{needed / 2**30:.2f} GiB but {device} has {free / 2**30:.2f} GiB free, and the cache may take at "
                f"most {MAX_FREE_SHARE:.0%} of it (the rest is for training); set dataset.cache_on_device: false "
                "or a smaller dataset.cache_size")
        self.dataset, self.batch_sampler, self.device = dataset, batch_sampler, device
        self.images = torch.empty((frames, 3, *size), dtype=torch.uint8, device=device)
        self.masks = torch.empty((frames, *size), dtype=torch.uint8, device=device)
        for start in range(0, frames, FILL_CHUNK):
            indices = range(start, min(start + FILL_CHUNK, frames))
            images = torch.empty((len(indices), 3, *size), dtype=torch.uint8)
            masks = torch.empty((len(indices), *size), dtype=torch.uint8)
            dataset.gather(indices, images.numpy(), masks.numpy())
            self.images[start:start + len(indices)].copy_(images)
            self.masks[start:start + len(indices)].copy_(masks)
        self.bytes = needed


    def __iter__(self) -> Iterator[Batch]:
        for indices in self.batch_sampler:
            index = torch.tensor(indices, dtype=torch.int64)
            if self.device.type == "cuda":  # a few bytes, queued without waiting for the device
                index = index.pin_memory()
            index = index.to(self.device, non_blocking=True)
            yield Batch(self.images.index_select(0, index), self.masks.index_select(0, index),
                        [self.dataset.paths[i] for i in indices])

    def describe(self) -> str:
        """One line for the log: how batches are served."""
        return f"full cache in {self.device} memory ({self.bytes / 2**30:.2f} GiB), batches gathered there by index"
