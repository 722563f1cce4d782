"""Datasets serving ``(image uint8 [3, H, W], mask uint8 [H, W], path)`` samples.

:class:`CachedDataset` slices the memory-mapped caches (no decoding, no colour
matching); :class:`DecodeDataset` decodes PNGs and colour-matches masks on every access,
the original pipeline's way, at the same output size. Both return the same values for
the same frame, which the tests check.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate, get_worker_info

from ..limits import ensure_open_files
from .cache import SequenceCache
from .decode import LabelSpec, load_image, load_mask
from .discovery import Frame


class Sample(NamedTuple):
    """One frame: ``image`` uint8 [3, H, W], ``mask`` uint8 [H, W] class ids (255 = ignore)."""

    image: torch.Tensor
    mask: torch.Tensor
    path: str


class Batch(NamedTuple):
    """A batch: ``images`` uint8 [B, 3, H, W], ``masks`` uint8 [B, H, W], ``paths``."""

    images: torch.Tensor
    masks: torch.Tensor
    paths: list[str]


def batch_buffer(shape: tuple[int, ...]) -> torch.Tensor:
    """An uninitialised uint8 tensor to fill with a batch.

    Inside a DataLoader worker it is allocated in shared memory, so handing the batch to
    the main process moves no bytes (``default_collate`` does the same).
    """
    if get_worker_info() is None:
        return torch.empty(shape, dtype=torch.uint8)
    storage = torch.UntypedStorage._new_shared(math.prod(shape))
    return torch.empty(0, dtype=torch.uint8).set_(storage).view(shape)


def collate_samples(data: Batch | list[Sample]) -> Batch:
    """DataLoader ``collate_fn``: batches from ``__getitems__`` pass through, sample lists are stacked."""
    if isinstance(data, Batch):
        return data
    images, masks, paths = default_collate(data)
    return Batch(images, masks, list(paths))


class CachedDataset(Dataset):
    """Frames of one split served from per-sequence memory-mapped caches.

    Memmaps are opened lazily in whichever process first reads, and dropped when the
    dataset is pickled, so DataLoader workers never receive array data. When a cache
    holds no images (``dataset.cache_images: false``) images are decoded from their
    files and resized; masks always come from the cache.
    """

    def __init__(self, caches: Sequence[SequenceCache]) -> None:
        if not caches:
            raise ValueError("CachedDataset needs at least one sequence cache")
        self.caches = tuple(caches)
        self.size = self.caches[0].size
        self.paths = [path for cache in self.caches for path in cache.frames]
        self.offsets = np.cumsum([0] + [len(cache.frames) for cache in self.caches])
        self._arrays: list[tuple[np.ndarray | None, np.ndarray]] | None = None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_arrays"] = None
        return state

    def _open(self) -> list[tuple[np.ndarray | None, np.ndarray]]:
        if self._arrays is None:
            ensure_open_files(sum(c.arrays for c in self.caches), f"reading {len(self.caches)} sequence caches")
            # Plain ndarray views of the memmaps: slicing them skips np.memmap's per-slice overhead.
            self._arrays = [(None if (images := c.open_images()) is None else images.view(np.ndarray),
                             c.open_masks().view(np.ndarray)) for c in self.caches]
        return self._arrays

    def __len__(self) -> int:
        return len(self.paths)

    def _locate(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if indices.size and (indices.min() < 0 or indices.max() >= len(self)):
            raise IndexError(f"index out of range for a dataset of {len(self)} frames")
        sequence = np.searchsorted(self.offsets, indices, side="right") - 1
        return sequence, indices - self.offsets[sequence]

    def _fill(self, index: int, sequence: int, local: int, image_out: np.ndarray, mask_out: np.ndarray) -> None:
        images, masks = self._open()[sequence]
        image_out[...] = load_image(self.paths[index], self.size) if images is None else images[local]
        mask_out[...] = masks[local]

    def __getitem__(self, index: int) -> Sample:
        (sequence,), (local,) = self._locate(np.array([index]))
        image = torch.empty((3, *self.size), dtype=torch.uint8)
        mask = torch.empty(self.size, dtype=torch.uint8)
        self._fill(index, sequence, local, image.numpy(), mask.numpy())
        return Sample(image, mask, self.paths[index])

    @property
    def holds_images(self) -> bool:
        """True when every cache holds images too, so serving a frame decodes nothing."""
        return all(cache.images_file is not None for cache in self.caches)

    def gather(self, indices: Sequence[int], images_out: np.ndarray, masks_out: np.ndarray) -> list[str]:
        """Copy frames ``indices`` into ``images_out[:n]`` / ``masks_out[:n]``; returns their paths.

        One copy per byte, straight from the memmaps; numpy releases the GIL while
        copying, so several threads can gather at once.
        """
        sequences, locals_ = self._locate(np.asarray(indices, dtype=np.int64))
        for k, (index, sequence, local) in enumerate(zip(indices, sequences, locals_, strict=False)):
            self._fill(index, sequence, local, images_out[k], masks_out[k])
        return [self.paths[i] for i in indices]

    def __getitems__(self, indices: Sequence[int]) -> Batch:
        """A whole batch in one tensor per field (what a DataLoader worker hands over)."""
        images = batch_buffer((len(indices), 3, *self.size))
        masks = batch_buffer((len(indices), *self.size))
        paths = self.gather(indices, images.numpy(), masks.numpy())
        return Batch(images, masks, paths)


class DecodeDataset(Dataset):
    """Frames decoded from their files on every access (``dataset.use_cache: false``).

    Slow by design (PNG decode + colour matching per sample); for comparison with the
    cache and for data that changes between runs.
    """

    def __init__(self, frames: Sequence[Frame], spec: LabelSpec, size: tuple[int, int]) -> None:
        self.frames = tuple(frames)
        self.spec = spec
        self.size = tuple(size)
        self.paths = [str(f.image) for f in self.frames]

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, index: int) -> Sample:
        frame = self.frames[index]
        image = torch.from_numpy(load_image(frame.image, self.size))
        mask = torch.from_numpy(load_mask(frame.mask, self.spec, self.size))
        return Sample(image, mask, self.paths[index])
