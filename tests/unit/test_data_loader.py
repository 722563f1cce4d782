"""build_loader: which loader serves which data, correct batches, drop_last, seeded order, unpadded shards."""

from __future__ import annotations

import pytest
import torch
from support.data_files import make_config, make_dataset
from torch.utils.data import DataLoader

from dist_seg.data.cache_loader import CacheLoader
from dist_seg.data.dataset import Batch
from dist_seg.data.loader import ShardSampler, SingleProcess, build_loader, describe_loader, set_epoch
from dist_seg.data.pipeline import load_datasets, prepare
from dist_seg.errors import DataError


@pytest.fixture
def bundle_and_cfg(tmp_path):
    root = make_dataset(tmp_path / "data", {"Video_000": 5})  # one sequence: 5 training frames
    cfg = make_config(tmp_path, root, training={"num_workers": 2, "batch_size": 2, "val_batch_size": 2})
    prepare(cfg, log=lambda _: None, progress=False)
    return load_datasets(cfg), cfg


def check_training_batches(loader, dataset, shape):
    """Two full batches of distinct frames, each image and mask equal to the dataset's own."""
    by_path = {dataset[i].path: dataset[i] for i in range(len(dataset))}
    batches = list(loader)
    assert len(batches) == len(loader) == 2  # 5 frames, batch 2: the last single frame is dropped
    seen = []
    for batch in batches:
        assert isinstance(batch, Batch)
        assert batch.images.dtype == torch.uint8 and batch.images.shape == (2, 3, *shape)
        assert batch.masks.dtype == torch.uint8 and batch.masks.shape == (2, *shape)
        for image, mask, path in zip(batch.images, batch.masks, batch.paths, strict=False):
            assert torch.equal(image, by_path[path].image) and torch.equal(mask, by_path[path].mask)
            seen.append(path)
    assert len(set(seen)) == 4


def test_full_cache_is_served_by_gather_threads(bundle_and_cfg):
    bundle, cfg = bundle_and_cfg
    loader = build_loader(bundle.train, cfg.training, SingleProcess(), train=True)
    assert isinstance(loader, CacheLoader) and loader.threads == 2 and not loader.pin_memory
    assert describe_loader(loader) == ("full cache served by 2 gather threads into reused batch buffers "
                                       "(no worker processes)")
    check_training_batches(loader, bundle.train, (16, 20))


def test_decoded_images_are_served_by_worker_processes(tmp_path):
    root = make_dataset(tmp_path / "data", {"Video_000": 5})
    cfg = make_config(tmp_path, root, dataset={"cache_images": False},
                      training={"num_workers": 2, "batch_size": 2, "val_batch_size": 2})
    prepare(cfg, log=lambda _: None, progress=False)
    dataset = load_datasets(cfg).train
    loader = build_loader(dataset, cfg.training, SingleProcess(), train=True)
    assert isinstance(loader, DataLoader)
    assert not loader.pin_memory and loader.persistent_workers and loader.prefetch_factor == 2
    assert describe_loader(loader) == "files decoded by 2 worker processes"
    check_training_batches(loader, dataset, (16, 20))


def test_training_order_depends_only_on_seed_and_epoch(bundle_and_cfg):
    bundle, cfg = bundle_and_cfg
    cfg.training.num_workers = 0

    def order(epoch):
        loader = build_loader(bundle.train, cfg.training, SingleProcess(), train=True)
        set_epoch(loader, epoch)
        return [p for batch in loader for p in batch.paths]

    assert order(0) == order(0)
    assert any(order(e) != order(0) for e in range(1, 5))


def test_evaluation_loader_keeps_every_frame_once_in_order(bundle_and_cfg):
    bundle, cfg = bundle_and_cfg
    loader = build_loader(bundle.train, cfg.training, SingleProcess(), train=False)
    paths = [p for batch in loader for p in batch.paths]
    assert paths == bundle.train.paths  # 5 frames in batches of 2: the last batch of 1 is kept


def test_shard_sampler_hands_out_contiguous_chunks_covering_each_index_once():
    for length in (0, 1, 7, 10):
        for world in (1, 2, 3, 4):
            shards = [list(ShardSampler(length, rank, world)) for rank in range(world)]
            assert sorted(i for shard in shards for i in shard) == list(range(length))
            assert [len(ShardSampler(length, rank, world)) for rank in range(world)] == [len(s) for s in shards]
            # Contiguous runs in rank order (consecutive frames stay together), balanced to within one.
            assert [i for shard in shards for i in shard] == list(range(length))
            assert max(map(len, shards)) - min(map(len, shards)) <= 1
    with pytest.raises(ValueError):
        ShardSampler(5, rank=2, world_size=2)


def test_too_few_training_frames_for_one_batch_is_a_clear_error(bundle_and_cfg):
    bundle, cfg = bundle_and_cfg
    cfg.training.batch_size = 8
    with pytest.raises(DataError, match="lower training.batch_size"):
        build_loader(bundle.train, cfg.training, SingleProcess(), train=True)


@pytest.mark.parametrize("cache_images", [True, False])
def test_an_epoch_can_start_part_way_without_reading_the_skipped_batches(tmp_path, monkeypatch, cache_images):
    root = make_dataset(tmp_path / "data", {"Video_000": 9})
    cfg = make_config(tmp_path, root, dataset={"cache_images": cache_images, "split": {"val": [], "test": []}},
                      training={"batch_size": 2})
    prepare(cfg, log=lambda _: None, progress=False)
    dataset = load_datasets(cfg).train
    loader = build_loader(dataset, cfg.training, SingleProcess(), train=True)
    assert isinstance(loader, CacheLoader if cache_images else DataLoader)
    set_epoch(loader, 3)
    full = [batch.paths for batch in loader]
    assert len(full) == len(loader) == 4

    # Both loaders read a batch through one dataset method: gather (CacheLoader), __getitems__ (DataLoader).
    reads: list[int] = []
    name = "gather" if cache_images else "__getitems__"
    original = getattr(dataset, name)
    monkeypatch.setattr(dataset, name, lambda indices, *args: reads.extend(indices) or original(indices, *args))
    set_epoch(loader, 3, start_sample=3 * 2)
    assert [batch.paths for batch in loader] == full[3:] and len(loader) == 4
    assert len(reads) == 2  # only the one remaining batch was read
    set_epoch(loader, 3)
    assert [batch.paths for batch in loader] == full  # the next set_epoch starts at the beginning
    assert len(reads) == 2 + 8


def test_only_a_training_loader_starts_part_way(bundle_and_cfg):
    bundle, cfg = bundle_and_cfg
    loader = build_loader(bundle.train, cfg.training, SingleProcess(), train=False)
    with pytest.raises(ValueError, match="only a training loader"):
        set_epoch(loader, 0, start_sample=1)
