"""CacheLoader and BatchBufferPool: same batches as a DataLoader, buffers reused only once released."""

from __future__ import annotations

import gc
import itertools
import threading

import pytest
import torch
from support.data_files import make_config, make_dataset
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler

from dist_seg.data.buffers import BatchBufferPool
from dist_seg.data.cache_loader import CacheLoader
from dist_seg.data.dataset import collate_samples
from dist_seg.data.loader import ShardSampler, describe_loader, loader_processes, set_epoch
from dist_seg.data.pipeline import load_datasets, prepare


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("cache_loader")
    root = make_dataset(tmp_path / "data", {"Video_000": 7, "Video_001": 6})  # 13 frames, two memmaps
    cfg = make_config(tmp_path, root, dataset={"split": {"val": [], "test": []}})
    prepare(cfg, log=lambda _: None, progress=False)
    return load_datasets(cfg).train


def training_loader(dataset, threads: int, batch_size: int = 3, **options) -> CacheLoader:
    sampler = DistributedSampler(dataset, num_replicas=1, rank=0, shuffle=True, seed=5, drop_last=True)
    return CacheLoader(dataset, BatchSampler(sampler, batch_size, drop_last=True), threads=threads, prefetch=2,
                       **options)


def as_lists(batches) -> list[tuple[list[str], torch.Tensor, torch.Tensor]]:
    return [(b.paths, b.images.clone(), b.masks.clone()) for b in batches]


@pytest.mark.parametrize("threads", [0, 1, 3])
def test_same_batches_in_the_same_order_as_a_dataloader_over_several_epochs(dataset, threads):
    loader = training_loader(dataset, threads)
    reference = DataLoader(dataset, batch_size=3, sampler=loader.sampler, drop_last=True, collate_fn=collate_samples)
    assert len(loader) == len(reference) == 4
    for epoch in range(3):
        set_epoch(loader, epoch)
        ours, theirs = as_lists(loader), as_lists(reference)
        assert [p for p, _, _ in ours] == [p for p, _, _ in theirs]
        for (_, images, masks), (_, ref_images, ref_masks) in zip(ours, theirs, strict=False):
            assert torch.equal(images, ref_images) and torch.equal(masks, ref_masks)


def test_evaluation_keeps_the_short_last_batch(dataset):
    loader = CacheLoader(dataset, BatchSampler(ShardSampler(len(dataset)), 4, drop_last=False), threads=2,
                         prefetch=1)
    batches = list(loader)
    assert [len(b.paths) for b in batches] == [4, 4, 4, 1]
    assert batches[-1].images.shape == (1, 3, 16, 20) and batches[-1].masks.shape == (1, 16, 20)
    assert [p for b in batches for p in b.paths] == dataset.paths
    assert torch.equal(batches[-1].images[0], dataset[12].image)
    assert torch.equal(batches[-1].masks[0], dataset[12].mask)


def test_buffers_are_reused_across_epochs(dataset):
    loader = training_loader(dataset, threads=2)
    for epoch in range(5):
        set_epoch(loader, epoch)
        for _batch in loader:
            pass
    # 20 batches went through, in flight at most lookahead (4) + the consumer's.
    assert loader.pool.allocated <= loader.lookahead + 2
    del _batch  # the last batch of the loop
    assert loader.pool.free == loader.pool.allocated


def test_a_batch_that_is_kept_is_never_overwritten(dataset):
    loader = training_loader(dataset, threads=2)
    kept = next(iter(loader))
    mask_row = kept.masks[0]  # a view alone also keeps the buffer out of the pool
    expected = [(dataset[dataset.paths.index(p)].image, dataset[dataset.paths.index(p)].mask) for p in kept.paths]
    for epoch in range(1, 4):
        set_epoch(loader, epoch)
        for _batch in loader:
            pass
    for image, mask, (ref_image, ref_mask) in zip(kept.images, kept.masks, expected, strict=False):
        assert torch.equal(image, ref_image) and torch.equal(mask, ref_mask)
    assert torch.equal(mask_row, expected[0][1])


def test_a_buffer_returns_when_its_last_view_is_gone():
    pool = BatchBufferPool(2, (4, 5), keep=4)
    buffer = pool.take()
    images, masks = pool.hand_out(buffer, 2)
    view, array = images[1, 0], masks.numpy()
    del images, masks
    gc.collect()
    assert pool.free == 0  # a tensor view and a numpy view still look at it
    del view
    assert pool.free == 0
    del array
    assert pool.free == 1
    assert pool.take() is buffer


def test_the_pool_keeps_at_most_keep_released_buffers_and_never_blocks():
    pool = BatchBufferPool(1, (2, 2), keep=2)
    held = [pool.hand_out(pool.take(), 1) for _ in range(5)]  # runs dry: allocates instead of waiting
    assert pool.allocated == 5
    del held
    assert pool.free == 2


def test_a_fenced_buffer_waits_for_its_fence_before_reuse():
    events: list[str] = []

    class FakeEvent:
        """Stands in for a CUDA event recorded after the host-to-device copy was queued."""

        def __init__(self) -> None:
            events.append("recorded")

        def synchronize(self) -> None:
            events.append("waited")

        def query(self) -> bool:
            return True

    pool = BatchBufferPool(1, (2, 2), keep=1, fence=FakeEvent)
    buffer = pool.take()
    images, masks = pool.hand_out(buffer, 1)
    del images, masks
    assert events == ["recorded"]
    assert pool.take() is buffer and events == ["recorded", "waited"]
    pool.hand_out(pool.take(), 1)  # a new buffer: nothing to wait for, and released at once
    assert events == ["recorded", "waited", "recorded"]


def test_gather_errors_reach_the_consumer(dataset, monkeypatch):
    loader = training_loader(dataset, threads=2)
    calls = itertools.count()
    original = dataset.gather

    def failing(indices, images, masks):
        if next(calls) == 2:
            raise OSError("cache file unreadable")
        return original(indices, images, masks)

    monkeypatch.setattr(dataset, "gather", failing)
    with pytest.raises(OSError, match="cache file unreadable"):
        list(loader)


def test_an_abandoned_epoch_leaves_the_next_one_intact(dataset):
    loader = training_loader(dataset, threads=2)
    reference = as_lists(training_loader(dataset, threads=0))
    first_two = as_lists(itertools.islice(iter(loader), 2))  # as a resumed epoch or a stop does
    assert [p for p, _, _ in first_two] == [p for p, _, _ in reference[:2]]
    again = as_lists(loader)
    assert [p for p, _, _ in again] == [p for p, _, _ in reference]
    assert all(torch.equal(a[1], b[1]) and torch.equal(a[2], b[2]) for a, b in zip(again, reference, strict=False))


def test_close_stops_the_gather_threads(dataset):
    loader = training_loader(dataset, threads=2)
    list(loader)
    names = {t.name for t in threading.enumerate()}
    assert any(name.startswith("dist_seg-gather") for name in names)
    loader.close()
    assert not any(t.name.startswith("dist_seg-gather") and t.is_alive() for t in threading.enumerate())


def test_a_cache_without_images_is_refused(tmp_path):
    root = make_dataset(tmp_path / "data", {"Video_000": 3})
    cfg = make_config(tmp_path, root, dataset={"cache_images": False, "split": {"val": [], "test": []}})
    prepare(cfg, log=lambda _: None, progress=False)
    masks_only = load_datasets(cfg).train
    with pytest.raises(ValueError, match="decode images with a DataLoader"):
        CacheLoader(masks_only, BatchSampler(ShardSampler(3), 2, drop_last=False), threads=1, prefetch=1)


def test_pinned_buffers_are_allocated_on_the_training_device_and_fenced(dataset, monkeypatch):
    """With a fake CUDA: buffers are pinned only in threads that made the training device current,
    and each released buffer waits for an event recorded on that device's stream before reuse."""
    current = threading.local()
    log: list[tuple] = []
    real_empty = torch.empty

    class FakeEvent:
        def __init__(self, blocking: bool = False) -> None:
            assert blocking  # a waiting loader thread sleeps instead of spinning

        def record(self, stream) -> None:
            log.append(("record", stream))

        def synchronize(self) -> None:
            log.append(("synchronize",))

        def query(self) -> bool:
            return True

    def set_device(device) -> None:
        current.device = torch.device(device)

    def empty(*args, pin_memory=False, **kwargs):
        if pin_memory:
            log.append(("pinned", getattr(current, "device", None), threading.current_thread().name))
        return real_empty(*args, **kwargs)

    monkeypatch.setattr(torch.cuda, "set_device", set_device)
    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device: f"stream of {device}")
    monkeypatch.setattr(torch, "empty", empty)
    device = torch.device("cuda", 1)
    loader = training_loader(dataset, threads=2, pin_device=device)
    assert loader.pin_memory and describe_loader(loader).endswith("into pinned batch buffers (no worker processes)")
    for epoch in range(3):
        set_epoch(loader, epoch)
        for batch in loader:
            del batch
    loader.close()
    pinned = [entry for entry in log if entry[0] == "pinned"]
    assert pinned and all(d == device and name.startswith("dist_seg-gather") for _, d, name in pinned)
    records = [entry for entry in log if entry[0] == "record"]
    assert len(records) == 12 and {stream for _, stream in records} == {"stream of cuda:1"}
    # Every reuse (12 batches, fewer buffers) waited for the fence recorded when the buffer came back.
    assert log.count(("synchronize",)) == 12 - len(pinned)


def test_only_decoding_worker_processes_count_against_torchs_cpu_threads(dataset):
    # A full cache's gather threads copy bytes: reserving cores for them would starve the model.
    assert loader_processes(training_loader(dataset, threads=4)) == 0
    decoding = DataLoader(dataset, batch_size=3, num_workers=2, collate_fn=collate_samples)
    assert loader_processes(decoding) == 2
    assert loader_processes(DataLoader(dataset, batch_size=3, collate_fn=collate_samples)) == 0
