"""End-to-end ``python -m dist_seg.train`` runs, cache on vs off: images/s and time waiting for data.

Both runs train the same model on the same scratch dataset for the same number of steps
(``training.max_steps``) with the same loader workers; only ``dataset.use_cache`` differs.
Throughput and the fraction of step time spent waiting for the next batch come from the
trainer's own TensorBoard windows (warm-up window dropped).

On a CPU a third run, "cache on, 1 thread", repeats the cached run with
``backend.cpu_threads: 1``: what ``auto`` chose before it stopped counting the cache's
gather threads as busy cores (one torch thread on a 2-core machine with 1+ gather threads).
"""

from __future__ import annotations

import statistics

from ..common import Record, ratio
from ..context import Context
from ..data import raw_config
from ..training_runs import train

NAME = "e2e"
TITLE = "End-to-end training: cache on vs off"


def run_workers(ctx: Context) -> int:
    """Loader workers of the training runs: the preset's, or half the cores (at most 8)."""
    if ctx.sizes.run_workers is not None:
        return ctx.sizes.run_workers
    return min(8, max(1, ctx.machine.cores // 2))


def training_config(ctx: Context, suite: str, *, use_cache: bool, workers: int) -> dict:
    """Config data of a benchmark training run: the step suite's model, production backend settings."""
    spec = ctx.sizes.model(ctx.device)
    raw = raw_config(ctx.data_root(), ctx.suite_dir(suite), ctx.scratch / "cache-full", image_size=spec.image_size,
                     batch_size=spec.batch_size, num_workers=workers, backbone=spec.backbone, use_cache=use_cache,
                     target="cpu" if ctx.device.type == "cpu" else "auto")
    # As in configs/david.yaml: bf16 autocast (also on a CPU), channels-last and compile left to "auto".
    raw["backend"]["amp_dtype"] = "bfloat16"
    return raw


def run(ctx: Context) -> list[Record]:
    workers = run_workers(ctx)
    spec = ctx.sizes.model(ctx.device)
    variants: list[tuple[str, bool, int | str]] = [("cache on", True, "auto"), ("cache off", False, "auto")]
    if ctx.device.type == "cpu":
        variants.append(("cache on, 1 thread", True, 1))
    records = []
    for variant, use_cache, threads in variants:
        ctx.log(f"  {variant}")
        raw = training_config(ctx, NAME, use_cache=use_cache, workers=workers)
        raw["backend"]["cpu_threads"] = threads
        windows = train(ctx.suite_dir(NAME) / variant.replace(" ", "_").replace(",", ""), raw, ctx.sizes)
        settings = {"model": spec.describe(), "num_workers": workers, "use_cache": use_cache,
                    "steps_per_window": ctx.sizes.run_log_interval, "amp_dtype": "bfloat16", "cpu_threads": threads}
        derived = {"data_wait_frac_median": round(statistics.median(windows.data_wait_frac), 4),
                   "data_wait_frac_max": round(max(windows.data_wait_frac), 4)}
        records.append(ctx.record(NAME, variant, "images_per_s", "images/s", windows.images_per_s, settings,
                                  derived))
    on, off = records[:2]
    on.derived["speedup_vs_cache_off"] = ratio(on.stats.median, off.stats.median)
    if len(records) == 3:
        on.derived["speedup_vs_1_thread"] = ratio(on.stats.median, records[2].stats.median)
    return records
