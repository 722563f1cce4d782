"""DataLoaders for training and evaluation, single-process or distributed.

Training shuffles with a :class:`TrainingSampler` (a DistributedSampler, also with one
process, as one replica) so the order depends only on ``training.seed`` and the epoch:
call :func:`set_epoch` before each epoch, and a resumed run sees the same order as an
uninterrupted one; a run resumed mid-epoch starts the epoch at its next batch without
reading (or decoding) the batches it already trained on. The last incomplete batch is
dropped, because a batch of one crashes the pooled BatchNorm of ASPP in training mode.

Evaluation shards with :class:`ShardSampler`, which never pads: ``DistributedSampler``
repeats frames to even out ranks, and repeated frames would be counted twice in the
all-reduced confusion matrix.

``training.num_workers`` means two things, by what the data needs: a cache holding
images is served by a :class:`~dist_seg.data.cache_loader.CacheLoader` with that many
gather THREADS (a batch is a memory copy; threads share the process and live for the
whole run, so ``persistent_workers`` does not apply); anything that decodes files gets a
DataLoader with that many worker PROCESSES, which decoding needs. :func:`describe_loader`
says which one a run got.

The loader is told where its process sits (rank, world size, device) by a
:class:`Placement`, which the runtime's ``DistContext`` satisfies; nothing here reads
torch.distributed's globals.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import psutil
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, DistributedSampler, Sampler

from ..config import TrainingConfig
from ..errors import ConfigError, DataError
from .cache_loader import CacheLoader
from .dataset import CachedDataset, collate_samples
from .device_cache import DeviceCacheLoader
from .shards import StreamedDataset

# What the trainer, evaluation and benchmarks iterate: both yield Batch records and have .sampler.
Loader = DataLoader | CacheLoader | DeviceCacheLoader

# The share of the available host memory that batches in flight may take: the model, the optimizer
# and the cache's page cache need the rest.
LOADER_MEMORY_SHARE = 0.5


class ShardSampler(Sampler[int]):
    """A contiguous run of indices per rank, in order: every index on exactly one rank, none padded.

    Contiguous, not strided, so consecutive frames of a sequence stay on one rank and the
    validation flicker rate sees their pairs (only the pairs across a chunk border are lost).
    Chunk lengths differ by at most one.
    """

    def __init__(self, length: int, rank: int = 0, world_size: int = 1) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside a world of {world_size}")
        self.length, self.rank, self.world_size = length, rank, world_size
        self.start = rank * length // world_size
        self.stop = (rank + 1) * length // world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.start, self.stop))

    def __len__(self) -> int:
        return self.stop - self.start


class TrainingSampler(DistributedSampler):
    """A DistributedSampler whose epoch can start part-way: after ``start_sample`` samples of its order.

    The epoch's order is one permutation of the dataset, seeded by ``training.seed`` and the
    epoch and independent of the world size; the ranks' k-th batches together are its k-th run
    of ``batch_size x world_size`` samples. ``start_sample`` counts the samples that all ranks
    together already trained, in whatever world size they ran, so a run resumed on another
    number of ranks deals out exactly the samples the interrupted epoch had not yet seen. From
    the start of an epoch the order is DistributedSampler's own (``drop_last``).
    ``len()`` stays the whole epoch's, so steps per epoch do not change on resume.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.start_sample = 0

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)
        rest = torch.randperm(len(self.dataset), generator=generator)[self.start_sample:].tolist()
        # Every rank gets as many as the others, as DistributedSampler's drop_last does.
        usable = len(rest) - len(rest) % self.num_replicas
        return iter(rest[self.rank:usable:self.num_replicas])


def seed_worker(worker_id: int) -> None:
    """Seed numpy and ``random`` in a worker from torch's per-worker seed (base seed + worker id)."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


class Placement(Protocol):
    """Where this process sits in the job (the runtime's ``DistContext`` is one)."""

    @property
    def rank(self) -> int: ...

    @property
    def world_size(self) -> int: ...

    @property
    def device(self) -> torch.device: ...


@dataclass(frozen=True)
class SingleProcess:
    """The placement of a job of one process (tools, benchmarks, tests)."""

    device: torch.device = torch.device("cpu")
    rank: int = 0
    world_size: int = 1


def _pin_device(device: torch.device) -> torch.device | None:
    if device.type != "cuda":
        return None
    return device if device.index is not None else torch.device("cuda", torch.cuda.current_device())


def check_training_frames(frames: int, tr: TrainingConfig, world_size: int) -> None:
    """DataError unless ``frames`` training frames give each of ``world_size`` processes one optimizer step.

    Training batches are full (the last partial one is dropped), so a step needs
    ``batch_size x world_size x grad_accum_steps`` frames.
    """
    needed = tr.batch_size * world_size * tr.grad_accum_steps
    if frames < needed:
        raise DataError(f"the training split has {frames} frames, fewer than one optimizer step needs "
                        f"(training.batch_size {tr.batch_size} x {world_size} process(es) x "
                        f"training.grad_accum_steps {tr.grad_accum_steps} = {needed}): lower training.batch_size "
                        "or training.grad_accum_steps, or add training sequences")


def check_loader_memory(size: tuple[int, int], batch_size: int, batches: int, tr: TrainingConfig, *,
                        train: bool) -> None:
    """ConfigError when the batches a loader keeps in flight would take too much of the available host memory.

    ``batch_size`` frames of ``size`` (uint8 image and mask) per batch, ``batches`` per
    epoch; ``training.num_workers x prefetch_factor`` are gathered ahead, plus the one in
    use and the one before it. A huge ``prefetch_factor`` (or ``val_batch_size``) would
    otherwise hold the whole epoch in memory, or fail at the first validation and lose
    the epoch's checkpoint.
    """
    in_flight = min(tr.num_workers * tr.prefetch_factor + 2, batches + 1)
    needed = 4 * size[0] * size[1] * batch_size * in_flight
    available = psutil.virtual_memory().available
    if needed <= LOADER_MEMORY_SHARE * available:
        return
    key = "training.batch_size" if train else "training.val_batch_size"
    raise ConfigError(f"{key} {batch_size}: the loader would hold {in_flight} batches of {batch_size} frames of "
                      f"{size[0]}x{size[1]} in memory (training.num_workers {tr.num_workers} x "
                      f"training.prefetch_factor {tr.prefetch_factor} ahead), {needed / 2**30:.1f} GiB, but only "
                      f"{available / 2**30:.1f} GiB are available; lower {key}, training.prefetch_factor or "
                      "training.num_workers")


def build_loader(dataset: Dataset, tr: TrainingConfig, placement: Placement, *, train: bool,
                 on_device: bool = False) -> Loader:
    """A loader yielding :class:`~dist_seg.data.dataset.Batch` (uint8 images, uint8 masks, paths).

    ``train`` selects shuffled, drop-last batches of ``training.batch_size``; otherwise
    ordered, unpadded shards in batches of ``training.val_batch_size``; ``placement``
    picks this process's shard. Memory is pinned unless the device is the CPU. A fully
    cached dataset gets a :class:`CacheLoader` (``num_workers`` threads), anything else a
    DataLoader (``num_workers`` processes). ``on_device`` (``dataset.cache_on_device``) keeps a
    fully cached dataset in device memory instead (:class:`DeviceCacheLoader`), same batches.
    """
    rank, world = placement.rank, placement.world_size
    batch_size = tr.batch_size if train else tr.val_batch_size
    if train:
        check_training_frames(len(dataset), tr, world)
        sampler: Sampler[int] = TrainingSampler(dataset, num_replicas=world, rank=rank, shuffle=True,
                                                seed=tr.seed, drop_last=True)
    else:
        sampler = ShardSampler(len(dataset), rank, world)
    # No batch holds more frames than this rank's share (a val_batch_size beyond it costs nothing).
    check_loader_memory(dataset.size, min(batch_size, len(sampler)), -(-len(sampler) // batch_size), tr,
                        train=train)
    pin_memory = placement.device.type != "cpu"
    if on_device:
        if not isinstance(dataset, CachedDataset):
            raise ConfigError("dataset.cache_on_device needs the cache (dataset.use_cache: true)")
        return DeviceCacheLoader(dataset, BatchSampler(sampler, batch_size, drop_last=train), placement.device)
    if isinstance(dataset, CachedDataset) and dataset.holds_images:
        return CacheLoader(dataset, BatchSampler(sampler, batch_size, drop_last=train), threads=tr.num_workers,
                           prefetch=tr.prefetch_factor, pin_device=_pin_device(placement.device))
    generator = torch.Generator()
    generator.manual_seed(tr.seed + rank)
    worker_options = ({"persistent_workers": tr.persistent_workers, "prefetch_factor": tr.prefetch_factor}
                      if tr.num_workers > 0 else {})
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=train, num_workers=tr.num_workers,
                      collate_fn=collate_samples, pin_memory=pin_memory, worker_init_fn=seed_worker,
                      generator=generator, **worker_options)


def set_epoch(loader: Loader, epoch: int, start_sample: int = 0) -> None:
    """Reshuffle the training order for ``epoch``, whose next iteration begins after ``start_sample`` samples.

    A no-op for evaluation loaders. ``start_sample`` resumes an epoch: the samples all ranks
    together trained before (in any world size) are skipped in the sampler, so they are never
    read, and the rest are dealt out as an uninterrupted epoch on this world size would have.
    """
    sampler = loader.sampler
    if isinstance(sampler, DistributedSampler):
        sampler.set_epoch(epoch)
    if isinstance(sampler, TrainingSampler):
        sampler.start_sample = start_sample
    elif start_sample:
        raise ValueError("only a training loader can start an epoch part-way")


def loader_processes(loader: Loader) -> int:
    """Worker processes the loader keeps busy decoding (a full cache's gather threads only copy: none)."""
    return 0 if isinstance(loader, (CacheLoader, DeviceCacheLoader)) else loader.num_workers


def describe_loader(loader: Loader) -> str:
    """One line for the log: how batches are served."""
    if isinstance(loader, (CacheLoader, DeviceCacheLoader)):
        return loader.describe()
    workers = (f"{loader.num_workers} worker process{'' if loader.num_workers == 1 else 'es'}"
               if loader.num_workers else "the main process")
    source = "shards streamed" if isinstance(loader.dataset, StreamedDataset) else "files decoded"
    return f"{source} by {workers}" + (" into pinned memory" if loader.pin_memory else "")
