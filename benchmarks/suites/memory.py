"""Host memory of the training process and of any loader worker with the full cache, small vs 4x larger dataset.

The cache is memory-mapped: the loader reads pages of the page cache, which every
process (every rank on a node) maps and none copies. Resident set size (RSS) therefore
grows with the frames a process has touched, but those pages are shared, clean and
reclaimable; what must stay flat in dataset size is what each process writes itself
(private dirty pages: heap, batch buffers, copies). PSS shows the sharing: shared pages
are split between the processes that map them.

The full cache is served by gather threads inside the training process (no worker
processes: ``dist_seg.data.cache_loader``), so the training process is the one row per
size; a loader that forks workers gets a row per worker.

Each size is loaded through the real ``build_loader`` in a fresh interpreter (so the main
process carries nothing from earlier suites), read for some warm-up epochs (every frame
touched), then memory is sampled after each further epoch.
"""

from __future__ import annotations

import multiprocessing
import statistics
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import psutil
import torch

from dist_seg.config import config_from_dict
from dist_seg.data.cache_loader import CacheLoader
from dist_seg.data.loader import SingleProcess, build_loader, describe_loader, set_epoch
from dist_seg.data.pipeline import load_datasets, prepare

from ..common import Record
from ..context import Context, quiet
from ..data import raw_config, sequence_names

NAME = "memory"
TITLE = "Host memory with the full cache: small vs 4x larger dataset"
MB = 2**20
FIGURES = ("rss_mb", "pss_mb", "uss_mb", "private_dirty_mb", "batch_buffers_mb")


def private_dirty_mb(pid: int) -> float | None:
    """Pages ``pid`` alone has written (its own heap, copies), from /proc/PID/smaps_rollup (Linux); else None."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Private_Dirty:"):
                return int(line.split()[1]) * 1024 / MB
    except (OSError, ValueError, IndexError):
        pass
    return None


def memory_figures(process: psutil.Process) -> dict[str, float | None]:
    """RSS, PSS, USS and private dirty memory of one process in MB (PSS/USS None where psutil has no full info)."""
    try:
        info = process.memory_full_info()
    except (psutil.AccessDenied, NotImplementedError):
        info = process.memory_info()
    pss, uss = getattr(info, "pss", None), getattr(info, "uss", None)
    return {"rss_mb": info.rss / MB, "pss_mb": None if pss is None else pss / MB,
            "uss_mb": None if uss is None else uss / MB, "private_dirty_mb": private_dirty_mb(process.pid)}


@dataclass(frozen=True)
class Job:
    """One dataset size to load and measure (plain data: it crosses into a fresh process)."""

    raw_config: dict
    warmup_epochs: int
    samples: int
    start_method: str  # how loader workers would start, as in the benchmark's own process (fork on Linux)
    device_type: str  # "cuda" pins batches, as training on a GPU does


def measure(job: Job) -> tuple[int, int, str, dict[str, list[dict]]]:
    """(frames, cache bytes, how the loader serves, role -> memory figures per sample) of loading one dataset.

    The main process's figures include ``batch_buffers_mb``: the loader's reused batch
    buffers (bounded by its look-ahead, not by the dataset), where it has them.

    Runs in a fresh interpreter, so the main process holds nothing earlier work left
    behind and both sizes start from the same state.
    """
    # A spawned interpreter defaults to spawning its own children too; training forks its workers.
    multiprocessing.set_start_method(job.start_method, force=True)
    cfg = config_from_dict(job.raw_config)
    prepare(cfg, log=quiet, progress=False)
    dataset = load_datasets(cfg).train
    height, width = cfg.training.image_size
    cache_bytes = len(dataset) * (3 + 1) * height * width
    loader = build_loader(dataset, cfg.training, SingleProcess(torch.device(job.device_type)), train=True)
    main = psutil.Process()
    before = {p.pid for p in main.children()}
    samples: dict[str, list[dict]] = {}
    for epoch in range(job.warmup_epochs + job.samples):
        set_epoch(loader, epoch)
        for _batch in loader:
            pass
        if epoch < job.warmup_epochs:
            continue
        workers = sorted((p for p in main.children() if p.pid not in before), key=lambda p: p.pid)
        for role, process in [("main", main)] + [(f"worker {i}", p) for i, p in enumerate(workers)]:
            samples.setdefault(role, []).append(memory_figures(process))
        if isinstance(loader, CacheLoader):
            samples["main"][-1]["batch_buffers_mb"] = loader.pool.allocated * loader.pool.buffer_bytes / MB
    return len(dataset), cache_bytes, describe_loader(loader), samples


def measure_in_fresh_process(job: Job) -> tuple[int, int, str, dict[str, list[dict]]]:
    """:func:`measure` in a new (spawned) interpreter; any loader workers fork from that one."""
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(measure, job).result()


def run(ctx: Context) -> list[Record]:
    names = sequence_names(ctx.sizes)
    # One sequence against all four: the larger dataset has 4x the frames.
    sets = {"small": names[:1], "large (4x)": names[:4]}
    records: list[Record] = []
    by_role: dict[tuple[str, str], Record] = {}
    sizes = ctx.sizes
    for label, include in sets.items():
        ctx.log(f"  {label}")
        raw = raw_config(ctx.data_root(), ctx.suite_dir(NAME) / label, ctx.scratch / "cache-full",
                         image_size=sizes.loader_size, batch_size=sizes.memory_batch,
                         num_workers=sizes.memory_workers, include=include)
        job = Job(raw, sizes.memory_epochs, sizes.repeats, multiprocessing.get_start_method(), ctx.device.type)
        frames, cache_bytes, served_by, samples = measure_in_fresh_process(job)
        for role, figures in samples.items():
            medians = {k: _median([f.get(k) for f in figures]) for k in FIGURES}
            settings = {"frames": frames, "cache_mb": round(cache_bytes / MB, 1), "image_size":
                        list(sizes.loader_size), "num_workers": sizes.memory_workers,
                        "batch_size": sizes.memory_batch, "loader": served_by}
            derived = {k: v for k, v in medians.items() if k != "rss_mb" and v is not None}
            record = ctx.record(NAME, f"{label}: {role}", "rss_mb", "MB", [f["rss_mb"] for f in figures],
                                settings, derived)
            records.append(record)
            by_role[(label, role)] = record
    for (label, role), record in by_role.items():
        small = by_role.get(("small", role))
        if label == "small" or small is None:
            continue
        for key in FIGURES:
            big_value = record.stats.median if key == "rss_mb" else record.derived.get(key)
            small_value = small.stats.median if key == "rss_mb" else small.derived.get(key)
            if big_value is not None and small_value is not None:
                # "or 0.0" turns a rounded -0.0 into 0.0 for the report.
                record.derived[f"{key.removesuffix('_mb')}_growth_mb"] = round(big_value - small_value, 1) or 0.0
        record.derived["cache_growth_mb"] = round(record.settings["cache_mb"] - small.settings["cache_mb"], 1)
    return records


def _median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return round(statistics.median(known), 1) if known else None
