"""DDP scaling: the same training run with 1 and with 2 ranks (torchrun; gloo on CPU, NCCL on GPU).

Every rank gets the same number of CPU threads in both runs (half the cores), so the
2-rank run does not get more compute per rank than the 1-rank run. On a CPU machine the
ranks still share memory bandwidth, caches and whatever else runs there, and the gradient
all-reduce goes through gloo on the same cores: the efficiency is a lower bound for a
machine with a device per rank.
"""

from __future__ import annotations

import statistics

import torch

from ..common import Record, ratio
from ..context import Context
from ..training_runs import train
from .e2e import training_config

NAME = "ddp"
TITLE = "DDP: 1 vs 2 ranks, images/s per rank and scaling efficiency"
WORLD_SIZES = (1, 2)


def run(ctx: Context) -> list[Record]:
    if ctx.device.type == "cuda" and torch.cuda.device_count() < max(WORLD_SIZES):
        ctx.log(f"  skipped: {max(WORLD_SIZES)} GPUs needed, {torch.cuda.device_count()} visible")
        return []
    threads = max(1, ctx.machine.cores // max(WORLD_SIZES))
    spec = ctx.sizes.model(ctx.device)
    records = []
    for world in WORLD_SIZES:
        ctx.log(f"  {world} rank(s)")
        # Loader workers 0: on a small CPU machine they would compete with the ranks for the same cores.
        raw = training_config(ctx, NAME, use_cache=True, workers=0)
        windows = train(ctx.suite_dir(NAME) / f"world{world}", raw, ctx.sizes, nproc=world, threads=threads)
        per_rank = [v / world for v in windows.images_per_s]
        settings = {"model": spec.describe(), "ranks": world, "threads_per_rank": threads,
                    "process_group": "nccl" if ctx.device.type == "cuda" else "gloo",
                    "batch_per_rank": spec.batch_size, "steps_per_window": ctx.sizes.run_log_interval}
        derived = {"global_images_per_s": round(statistics.median(windows.images_per_s), 2)}
        records.append(ctx.record(NAME, f"{world} rank{'s' if world > 1 else ''}", "images_per_s", "images/s",
                                  per_rank, settings, derived))
    one = records[0].stats.median
    for r in records:
        r.derived["scaling_efficiency"] = ratio(r.stats.median, one)
    return records
