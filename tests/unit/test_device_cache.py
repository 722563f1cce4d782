"""dataset.cache_on_device: the cache in device memory serves the host loader's batches, in order, and the
trainer's augmentation of them is the same; a cache that does not fit is refused before any copy."""

from __future__ import annotations

import pytest
import torch
from support.data_files import make_config, make_dataset
from torch.utils.data import BatchSampler

from dist_seg.config import AugmentConfig, PhotometricConfig
from dist_seg.data.cache_loader import CacheLoader
from dist_seg.data.device_cache import DeviceCacheLoader
from dist_seg.data.loader import TrainingSampler, describe_loader, loader_processes, set_epoch
from dist_seg.data.pipeline import load_datasets, prepare
from dist_seg.errors import ConfigError
from dist_seg.train.augment import BatchPreparer

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("device_cache")
    root = make_dataset(tmp_path / "data", {"Video_000": 5, "Video_001": 4})
    cfg = make_config(tmp_path, root, dataset={"split": {"val": [], "test": []}})
    prepare(cfg, log=lambda _: None, progress=False)
    return load_datasets(cfg).train


def _sampler(dataset) -> BatchSampler:
    return BatchSampler(TrainingSampler(dataset, num_replicas=1, rank=0, shuffle=True, seed=3, drop_last=True), 2,
                        drop_last=True)


def test_device_cache_serves_the_host_batches_and_the_same_augmentation(dataset):
    host = CacheLoader(dataset, _sampler(dataset), threads=0, prefetch=1)
    device = DeviceCacheLoader(dataset, _sampler(dataset), CPU)
    assert loader_processes(device) == 0 and "memory" in describe_loader(device)
    prep = BatchPreparer(CPU, torch.contiguous_format, (16, 16), void_index=None)
    aug = AugmentConfig(photometric=PhotometricConfig(enabled=True))
    for epoch in range(2):
        gens = torch.Generator().manual_seed(epoch), torch.Generator().manual_seed(epoch)
        set_epoch(host, epoch, start_sample=2)
        set_epoch(device, epoch, start_sample=2)  # a resumed epoch starts at the same sample too
        pairs = list(zip(host, device, strict=True))
        assert len(pairs) == len(host) - 1
        for ours, theirs in pairs:
            assert ours.paths == theirs.paths
            assert torch.equal(ours.images, theirs.images) and torch.equal(ours.masks, theirs.masks)
            x_host, y_host = prep.train_batch(ours.images, ours.masks, aug, gens[0])
            x_dev, y_dev = prep.train_batch(theirs.images, theirs.masks, aug, gens[1])
            assert torch.equal(x_host, x_dev) and torch.equal(y_host, y_dev)


def test_a_cache_larger_than_half_the_free_memory_is_refused(dataset):
    frame_bytes = 4 * dataset.size[0] * dataset.size[1]
    needed = len(dataset) * frame_bytes
    with pytest.raises(ConfigError, match=r"dataset.cache_on_device: .* set dataset.cache_on_device: false"):
        DeviceCacheLoader(dataset, _sampler(dataset), CPU, free_bytes=lambda _d: 2 * needed - 1)
    assert DeviceCacheLoader(dataset, _sampler(dataset), CPU, free_bytes=lambda _d: 2 * needed).bytes == needed
