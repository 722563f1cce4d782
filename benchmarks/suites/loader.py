"""Samples/s the training loader delivers: decode vs mask cache vs full uint8 cache, and the copy floor.

Variants (each through the real ``build_loader`` at the training resolution):

* ``decode``: the original pipeline's way (``dataset.use_cache: false``): decode the RGB
  image PNG and the RGB mask PNG and colour-match every mask pixel, for every sample;
  a DataLoader with ``num_workers`` worker processes;
* ``mask cache``: masks from the cache, images decoded (``dataset.cache_images: false``);
  a DataLoader with ``num_workers`` worker processes;
* ``full cache``: image and mask from the memory-mapped uint8 cache (the default); a
  CacheLoader with ``num_workers`` gather threads and reused (pinned, on a GPU) batch buffers;
* ``full cache on device``: the same cache held in device memory (``dataset.cache_on_device``),
  each batch an ``index_select`` there: beside the pinned path it shows what the
  host-to-device side of the loader costs (on a CPU run the "device" is host memory).

Floors, measured in the same run with the same bytes per sample:

* ``floor: plain copy``: gathering a batch's samples from a preallocated in-memory array
  into a preallocated batch array, one core: what a memcpy-bound loader cannot beat;
* ``floor: fresh shared copy``: the same copy into a new shared-memory batch each time,
  which is what every DataLoader worker process must do to hand a batch over (and why
  the full cache is served by threads instead).

Streaming (``dataset.remote``, see docs/streaming.md), measured in the same run next to the
full cache: the full cache written as shards by ``prepare --shards``'s own writer (64 MiB
chunks), served by moto's S3 server on loopback in this process (so its CPU time counts
against the loader), read through a DataLoader with ``num_workers`` worker processes:

* ``streaming cold``: one epoch per repeat from an empty ``dataset.local_cache``: every chunk
  is downloaded on first use;
* ``streaming warm``: every chunk already in ``dataset.local_cache``; no request reaches the store.

The consumer only takes each batch (no device copy, no training step). The derived
``data_wait_frac`` of the full cache and streaming rows comes from one more epoch per repeat
(from an empty local cache for ``streaming cold``) whose consumer sleeps ``STEP_MS`` per batch,
a training step that leaves the cores to the loader: the share of that epoch spent waiting
for batches, as ``train/data_wait_frac`` counts it.
"""

from __future__ import annotations

import gc
import importlib.util
import resource
import shutil
import statistics
import time

import numpy as np
import torch

from dist_seg.config import Config, apply_overrides, config_from_dict
from dist_seg.data.loader import Loader, SingleProcess, build_loader, describe_loader, set_epoch
from dist_seg.data.pipeline import load_datasets, prepare, write_split_shards

from ..common import Record, ratio, synchronize
from ..context import Context, quiet
from ..data import raw_config
from ..loopback_s3 import LoopbackS3

NAME = "loader"
TITLE = "Loader samples/s: decode vs caches vs the memory-copy floor"

# (variant, use_cache, cache_images); mask-only and full caches live in separate folders
# because a cache folder holds one setting at a time.
VARIANTS = (("decode", False, True), ("mask cache", True, False), ("full cache", True, True))
BASELINE = "decode"
CACHED = "full cache"
STREAMING = ("streaming cold", "streaming warm")
# The training step the data-wait epochs stand in for (a sleep: it leaves the cores to the loader).
STEP_MS = 25.0


CPU = torch.device("cpu")


def run(ctx: Context) -> list[Record]:
    sizes = ctx.sizes
    workers = [w for w in sizes.loader_workers if w <= ctx.machine.cores]
    records: list[Record] = []
    frames = 0
    for variant, use_cache, cache_images in VARIANTS:
        raw = raw_config(ctx.data_root(), ctx.suite_dir(NAME) / variant.replace(" ", "_"),
                         ctx.scratch / ("cache-full" if cache_images else "cache-masks"),
                         image_size=sizes.loader_size, batch_size=sizes.loader_batch, num_workers=0,
                         use_cache=use_cache, cache_images=cache_images)
        cfg = config_from_dict(raw)
        prepare(cfg, log=quiet, progress=False)
        dataset = load_datasets(cfg).train
        frames = len(dataset)
        for num_workers in workers:
            cfg.training.num_workers = num_workers
            ctx.log(f"  {variant}, {num_workers} workers")
            loader = build_loader(dataset, cfg.training, SingleProcess(ctx.device), train=True)
            values = _measure(loader, sizes.repeats, sizes.loader_seconds, ctx.device)
            derived = ({"data_wait_frac": _median_wait(loader, sizes.repeats)} if variant == CACHED else {})
            settings = {"pipeline": variant, **_settings(sizes, frames, num_workers, loader)}
            records.append(ctx.record(NAME, _name(variant, num_workers), "samples_per_s", "samples/s",
                                      values, settings, derived))
            del loader
            gc.collect()  # shuts persistent workers or gather threads down before the next measurement
        if variant == CACHED:
            ctx.log(f"  {variant} on device")
            loader = build_loader(dataset, cfg.training, SingleProcess(ctx.device), train=True, on_device=True)
            values = _measure(loader, sizes.repeats, sizes.loader_seconds, ctx.device)
            settings = {"pipeline": f"{variant} on device", **_settings(sizes, frames, 0, loader)}
            records.append(ctx.record(NAME, f"{variant} on device", "samples_per_s", "samples/s", values, settings))
            del loader
            records += _streaming(ctx, cfg, workers, frames)
    shape = (3, *sizes.loader_size)
    for variant, shared in (("floor: plain copy", False), ("floor: fresh shared copy", True)):
        runs = [_copy_floor(frames, shape, sizes.loader_batch, sizes.loader_seconds, shared)
                for _ in range(sizes.repeats)]
        faults = statistics.median(f for _, f in runs)
        records.append(ctx.record(NAME, variant, "samples_per_s", "samples/s", [rate for rate, _ in runs],
                                  {"pipeline": variant, **_settings(sizes, frames, 0, None)},
                                  {"page_faults_per_sample": round(faults, 1)}))
    return _with_ratios(records)


def _name(variant: str, num_workers: int) -> str:
    return f"{variant}, {num_workers} worker{'' if num_workers == 1 else 's'}"


def _streaming(ctx: Context, cached: Config, workers: list[int], frames: int) -> list[Record]:
    """``streaming cold`` and ``streaming warm`` rows: the full cache's frames as shards on a loopback S3 store."""
    if not all(importlib.util.find_spec(name) for name in ("litdata", "moto")):
        ctx.log("  streaming rows skipped: they need pip install 'dist_seg[stream]' 'moto[server]'")
        return []
    sizes = ctx.sizes
    shards = ctx.scratch / "shards"
    shutil.rmtree(shards, ignore_errors=True)
    write_split_shards(cached, shards)
    local_cache = ctx.suite_dir(NAME) / "stream_cache"
    records: list[Record] = []
    with LoopbackS3(shards, "dist-seg-bench", "shards") as s3:
        # The full cache's output folder: its splits, and the cache the shards are checked against.
        raw = raw_config(ctx.data_root(), cached.training.output_dir, cached.dataset.cache_dir,
                         image_size=sizes.loader_size, batch_size=sizes.loader_batch, num_workers=0)
        apply_overrides(raw, [("dataset.remote", s3.url), ("dataset.local_cache", str(local_cache))])
        cfg = config_from_dict(raw)
        for num_workers in workers:
            cfg.training.num_workers = num_workers
            ctx.log(f"  streaming, {num_workers} workers")

            def cold_loader() -> Loader:
                shutil.rmtree(local_cache, ignore_errors=True)
                return build_loader(load_datasets(cfg).train, cfg.training, SingleProcess(ctx.device), train=True)

            cold, waits = [], []
            for _ in range(sizes.repeats):
                loader = cold_loader()
                start = time.perf_counter()
                cold.append(_epoch(loader, 0) / (time.perf_counter() - start))
                waits.append(_wait_fraction(cold_loader(), 0))
            settings = {"pipeline": STREAMING[0], **_settings(sizes, frames, num_workers, loader)}
            records.append(ctx.record(NAME, _name(STREAMING[0], num_workers), "samples_per_s", "samples/s", cold,
                                      settings, {"data_wait_frac": round(statistics.median(waits), 3)}))
            # The last cold epoch left every chunk in the local cache.
            loader = build_loader(load_datasets(cfg).train, cfg.training, SingleProcess(ctx.device), train=True)
            s3.clear()
            warm = _measure(loader, sizes.repeats, sizes.loader_seconds)
            derived = {"data_wait_frac": _median_wait(loader, sizes.repeats), "store_requests": len(s3.requests())}
            settings = {"pipeline": STREAMING[1], **_settings(sizes, frames, num_workers, loader)}
            records.append(ctx.record(NAME, _name(STREAMING[1], num_workers), "samples_per_s", "samples/s", warm,
                                      settings, derived))
            del loader
            gc.collect()
    return records


def _epoch(loader: Loader, epoch: int) -> int:
    """Take every batch of one epoch; returns the samples."""
    set_epoch(loader, epoch)
    return sum(len(batch.paths) for batch in loader)


def _wait_fraction(loader: Loader, epoch: int) -> float:
    """Share of one epoch spent waiting for batches when each batch is followed by a ``STEP_MS`` step."""
    set_epoch(loader, epoch)
    waited = 0.0
    start = time.perf_counter()
    batches = iter(loader)
    while True:
        before = time.perf_counter()
        batch = next(batches, None)
        waited += time.perf_counter() - before
        if batch is None:
            return waited / (time.perf_counter() - start)
        time.sleep(STEP_MS / 1000)


def _median_wait(loader: Loader, repeats: int) -> float:
    return round(statistics.median(_wait_fraction(loader, epoch) for epoch in range(repeats)), 3)


def _settings(sizes, frames: int, num_workers: int, loader: Loader | None) -> dict:
    settings = {"image_size": list(sizes.loader_size), "batch_size": sizes.loader_batch, "frames": frames,
                "num_workers": num_workers, "source_frame_size": "800x600"}
    if loader is not None:
        settings["loader"] = describe_loader(loader)
    return settings


def _measure(loader: Loader, repeats: int, min_seconds: float, device: torch.device = CPU) -> list[float]:
    """Samples/s per repeat; a repeat is whole epochs lasting at least ``min_seconds``.

    One warm-up epoch first: it starts the workers, maps the cache pages and fills the
    prefetch queues, none of which a long training run pays per epoch.
    """
    epoch = 0

    def one_epoch() -> int:
        nonlocal epoch
        epoch += 1
        samples = _epoch(loader, epoch - 1)
        synchronize(device)  # batches gathered on a GPU count once they are there
        return samples

    one_epoch()
    results = []
    for _ in range(repeats):
        samples = 0
        start = time.perf_counter()
        while True:
            samples += one_epoch()
            elapsed = time.perf_counter() - start
            if elapsed >= min_seconds:
                break
        results.append(samples / elapsed)
    return results


def _copy_floor(frames: int, image_shape: tuple[int, ...], batch_size: int, min_seconds: float,
                shared: bool) -> tuple[float, float]:
    """(samples/s, minor page faults per sample) of gathering shuffled batches from in-memory uint8 arrays.

    One core. The source arrays have the cache's shapes and are touched before timing.
    ``shared`` copies into a new shared-memory buffer per batch (what a worker process
    hands over: every page of it is fresh and faults on first write); otherwise into one
    preallocated buffer.
    """
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (frames, *image_shape), dtype=np.uint8)
    masks = rng.integers(0, 13, (frames, *image_shape[1:]), dtype=np.uint8)
    sample_bytes = images[0].nbytes + masks[0].nbytes
    fixed = np.zeros(batch_size * sample_bytes, dtype=np.uint8)

    def batch_buffer() -> np.ndarray:
        if not shared:
            return fixed
        storage = torch.UntypedStorage._new_shared(batch_size * sample_bytes)
        return torch.empty(0, dtype=torch.uint8).set_(storage).numpy()

    samples = 0
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    start = time.perf_counter()
    while True:
        order = rng.permutation(frames)
        for first in range(0, frames - batch_size + 1, batch_size):
            buffer = batch_buffer()
            out_images = buffer[: batch_size * images[0].nbytes].reshape(batch_size, *image_shape)
            out_masks = buffer[batch_size * images[0].nbytes:].reshape(batch_size, *image_shape[1:])
            for k, index in enumerate(order[first:first + batch_size]):
                out_images[k] = images[index]
                out_masks[k] = masks[index]
            samples += batch_size
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
            return samples / elapsed, faults / samples


def _with_ratios(records: list[Record]) -> list[Record]:
    """Add per-core throughput and the ratios to decode (same workers), to the plain-copy floor and to the host cache."""
    decode = {r.settings["num_workers"]: r.stats.median for r in records if r.settings["pipeline"] == BASELINE}
    floor = next(r.stats.median for r in records if r.settings["pipeline"] == "floor: plain copy")
    host_cache = [r.stats.median for r in records if r.settings["pipeline"] == CACHED]
    for r in records:
        if r.settings["pipeline"].startswith("floor"):
            r.derived["vs_plain_copy_floor"] = ratio(r.stats.median, floor)
            continue
        workers = r.settings["num_workers"]
        r.derived["per_core_samples_per_s"] = round(r.stats.median / max(1, workers), 1)
        if workers in decode:
            r.derived["vs_decode_same_workers"] = ratio(r.stats.median, decode[workers])
        r.derived["vs_plain_copy_floor"] = ratio(r.stats.median, floor)
        if r.settings["pipeline"] == f"{CACHED} on device" and host_cache:
            r.derived["vs_host_cache_best"] = ratio(r.stats.median, max(host_cache))
        if r.settings["pipeline"] in STREAMING:
            cached = next(c.stats.median for c in records
                          if c.settings["pipeline"] == CACHED and c.settings["num_workers"] == workers)
            r.derived["vs_full_cache_same_workers"] = ratio(r.stats.median, cached)
        if r.settings["pipeline"] == CACHED:
            r.derived["at_least_20x_decode"] = r.derived["vs_decode_same_workers"] >= 20
            r.derived["within_2x_of_floor"] = r.derived["vs_plain_copy_floor"] >= 0.5
    return records
