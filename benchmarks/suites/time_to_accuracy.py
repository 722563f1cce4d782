"""Time to accuracy on real footage: ``dist_seg.train`` vs the original pipeline and the peers' recipes.

One run trains, one after the other on the same machine and data:

* ``reference``: ``benchmarks/reference_pipeline.py`` (the original pipeline re-created:
  per-sample decode and colour matching, LR-ASPP MobileNetV3-Large from scratch, AdamW 1e-4
  constant, eager float32, 2 loader workers, batch 4, 180x240); its final validation mIoU is
  the target;
* ``torchvision`` and ``mmseg``: ``benchmarks/peer_recipes.py``, the same model, data,
  resolution, batch and epochs trained with torchvision's ``references/segmentation`` recipe
  and with MMSegmentation's DeepLabV3+ schedule (SGD + poly, their scale / crop / flip
  augmentation, LR scaled linearly to batch 4; float32, both recipes' default); each is a
  reference of its own: its final mIoU a target and its wall-clock a budget;
* ``dist_seg``: ``python -m dist_seg.train`` with the same model, resolution, batch, epochs and
  data, validating every epoch, everything else at dist_seg's defaults (cold cache: the
  cache build counts).

Both are child processes timed by this one from their launch, so interpreter start-up,
cache builds and validation are included. The reference stamps its own epoch records; for
dist_seg an epoch's time is the modification time of ``history.json`` when the record
appeared (the file is replaced atomically once per epoch; it is polled while the child runs).

Reported, against each reference in turn: the wall-clock at which it and dist_seg first reach
its final mIoU and their ratio, each one's best mIoU within that reference's total wall-clock
(mIoU in equal time), all learning curves
(``time_to_accuracy.json``) and a plot of mIoU over wall-clock seconds
(``time_to_accuracy.png``), with the CPU model. Data: ``--data-root`` (default
``../shared/data/camvid_dev``): CamVid's ``0001TP`` + ``0006R0`` train and ``Seq05VD`` validates
when present, otherwise the last sequence (by name) validates and the others train;
``classes.yaml`` in the root gives the classes (DAVID's otherwise), void ignored.
``--quick`` / ``--tiny`` train one epoch each on a few frames per sequence: a smoke test
whose numbers mean nothing.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from dist_seg import atomic

from ..common import Record, ratio
from ..context import Context
from ..peer_recipes import RECIPES
from ..plot import line_chart
from ..reference_pipeline import DEFAULT_DATA_ROOT, REPO_ROOT

NAME = "time_to_accuracy"
TITLE = "Time to accuracy: dist_seg vs the original pipeline and the peers' recipes (real footage)"
PEERS = tuple(RECIPES)  # torchvision, mmseg: benchmarks/peer_recipes.py

IMAGE_SIZE = (180, 240)
BATCH_SIZE = 4
CAMVID_SPLIT = (("0001TP", "0006R0"), ("Seq05VD",))
# A full run on a loaded 2-core machine takes an hour or more; this only catches a hung child.
CHILD_TIMEOUT_S = 8 * 3600
POLL_S = 0.25


@dataclass(frozen=True)
class Plan:
    """Epochs of both runs and the frames each sequence contributes (None = all)."""

    epochs: int
    frames_per_sequence: int | None


PLANS = {"full": Plan(8, None), "quick": Plan(1, 12), "tiny": Plan(1, 8)}


@dataclass(frozen=True)
class Point:
    """One validated epoch: seconds since the child's launch and its validation mIoU."""

    epoch: int
    wall_s: float
    miou: float


def choose_split(root: Path) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(train, val) sequence names: CamVid's usual split when present, else the last sequence validates."""
    images = root / "Images"
    if not images.is_dir():
        raise FileNotFoundError(f"{root} has no Images/ folder; pass --data-root with a dataset in DAVID layout "
                                f"(default {DEFAULT_DATA_ROOT})")
    sequences = sorted(p.name for p in images.iterdir() if p.is_dir())
    train, val = CAMVID_SPLIT
    if set(train + val) <= set(sequences):
        return train, val
    if len(sequences) < 2:
        raise ValueError(f"{root}: time to accuracy needs at least 2 sequences (train + val), found {sequences}")
    return tuple(sequences[:-1]), (sequences[-1],)


def subsample(root: Path, sequences: tuple[str, ...], per_sequence: int, out: Path) -> Path:
    """A dataset at ``out`` of symlinks to about ``per_sequence`` evenly spaced frames of each sequence."""
    shutil.rmtree(out, ignore_errors=True)
    for sequence in sequences:
        frames = sorted(p for p in (root / "Images" / sequence).iterdir() if p.is_file())
        stride = max(1, math.ceil(len(frames) / per_sequence))
        for image in frames[::stride]:
            mask = root / "Labels" / sequence / f"{image.stem}.png"
            for source, folder in ((image, "Images"), (mask, "Labels")):
                link = out / folder / sequence / source.name
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(source.resolve())
    if (root / "classes.yaml").exists():
        (out / "classes.yaml").symlink_to((root / "classes.yaml").resolve())
    return out


def child_env() -> dict[str, str]:
    """The environment of the children: this checkout's package first on the path, unbuffered output."""
    path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return dict(os.environ, PYTHONPATH=path, PYTHONUNBUFFERED="1")


def run_curve_script(ctx: Context, script: str, args: list[str], data: Path,
                     split: tuple[tuple[str, ...], tuple[str, ...]], epochs: int, work: Path) -> list[Point]:
    """Train with ``benchmarks/<script>`` (the reference or a peer recipe) in a child process.

    Returns its curve with times since the child's launch; the script writes its own epoch
    records (``reference_pipeline.py``'s curve format).
    """
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    curve_path = work / "curve.json"
    command = [sys.executable, str(REPO_ROOT / "benchmarks" / script), *args, "--data-root", str(data),
               "--train", *split[0], "--val", *split[1], "--epochs", str(epochs), "--device", str(ctx.device),
               "--out", str(curve_path)]
    with open(work / "train.log", "w") as log:
        launch = time.time()
        result = subprocess.run(command, env=child_env(), stdout=log, stderr=subprocess.STDOUT,
                                timeout=CHILD_TIMEOUT_S, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{script} {' '.join(args)} failed (exit {result.returncode}); see {work / 'train.log'}:\n"
                           + (work / "train.log").read_text()[-3000:])
    curve = json.loads(curve_path.read_text())
    return [Point(e["epoch"], e["timestamp"] - launch, e["val_mIoU"]) for e in curve["epochs"]]


def run_reference(ctx: Context, data: Path, split: tuple[tuple[str, ...], tuple[str, ...]], epochs: int,
                  work: Path) -> list[Point]:
    """Train the original pipeline's way in a child process; its curve with times since the child's launch."""
    return run_curve_script(ctx, "reference_pipeline.py", [], data, split, epochs, work)


def run_peer(ctx: Context, recipe: str, data: Path, split: tuple[tuple[str, ...], tuple[str, ...]], epochs: int,
             work: Path) -> list[Point]:
    """Train with a peer's recipe (``peer_recipes.py --recipe``) at the suite's size and batch."""
    args = ["--recipe", recipe, "--size", *(str(v) for v in IMAGE_SIZE), "--batch-size", str(BATCH_SIZE)]
    return run_curve_script(ctx, "peer_recipes.py", args, data, split, epochs, work)


def dist_seg_config(data: Path, split: tuple[tuple[str, ...], tuple[str, ...]], epochs: int, work: Path,
                    device_type: str) -> dict[str, Any]:
    """Config data of the dist_seg run: same model, resolution, batch and data; defaults otherwise."""
    dataset: dict[str, Any] = {"root": str(data), "cache_dir": str(work / "cache"),
                               "split": {"val": list(split[1]), "test": []}}
    if (data / "classes.yaml").exists():
        dataset["classes"] = str(data / "classes.yaml")
        dataset["void_class"] = yaml.safe_load((data / "classes.yaml").read_text()).get("void_class")
    else:
        dataset["void_class"] = "void"
    dataset["include"] = [*split[0], *split[1]]
    return {
        "dataset": dataset,
        "model": {"type": "lraspp", "backbone": "mobilenet_v3_large"},
        "backend": {"target": "cpu" if device_type == "cpu" else "auto"},
        "training": {"output_dir": str(work / "out"), "epochs": epochs, "batch_size": BATCH_SIZE,
                     "val_batch_size": BATCH_SIZE, "image_size": list(IMAGE_SIZE), "val_interval": 1},
        "telemetry": {"progress": "log"},
    }


def run_dist_seg(ctx: Context, data: Path, split: tuple[tuple[str, ...], tuple[str, ...]], epochs: int,
                 work: Path, overrides: tuple[str, ...] = ()) -> list[Point]:
    """Train with ``python -m dist_seg.train`` in a child process, timestamping each history record.

    ``overrides`` are ``KEY=VALUE`` settings passed on as ``--set`` (the recipe ablation's variants).
    """
    shutil.rmtree(work, ignore_errors=True)  # cold start: no cache, no checkpoint to resume
    work.mkdir(parents=True)
    config = work / "config.yaml"
    config.write_text(yaml.safe_dump(dist_seg_config(data, split, epochs, work, ctx.device.type), sort_keys=False))
    settings = [arg for item in overrides for arg in ("--set", item)]
    history = work / "out" / "history.json"
    stamps: dict[int, float] = {}
    with open(work / "train.log", "w") as log:
        launch = time.time()
        child = subprocess.Popen([sys.executable, "-m", "dist_seg.train", str(config), *settings], env=child_env(),
                                 stdout=log, stderr=subprocess.STDOUT)
        last_mtime = None
        while True:
            done = child.poll() is not None
            try:
                mtime = history.stat().st_mtime
            except FileNotFoundError:
                mtime = None
            if mtime is not None and mtime != last_mtime:
                last_mtime = mtime
                for record in json.loads(history.read_text()):
                    stamps.setdefault(record["epoch"], mtime - launch)
            if done:
                break
            if time.time() - launch > CHILD_TIMEOUT_S:
                child.kill()
                raise RuntimeError(f"dist_seg run exceeded {CHILD_TIMEOUT_S} s; see {work / 'train.log'}")
            time.sleep(POLL_S)
    if child.returncode != 0:
        raise RuntimeError(f"dist_seg run failed (exit {child.returncode}); see {work / 'train.log'}:\n"
                           + (work / "train.log").read_text()[-3000:])
    # A benchmark run is never resumed; its checkpoints and cache only fill the disk.
    shutil.rmtree(work / "out" / "checkpoints", ignore_errors=True)
    shutil.rmtree(work / "cache", ignore_errors=True)
    return [Point(r["epoch"], stamps[r["epoch"]], r["val_mIoU"]) for r in json.loads(history.read_text())
            if r.get("val_mIoU") is not None]


def time_to(curve: list[Point], target: float) -> float | None:
    """Wall-clock of the first epoch reaching ``target`` mIoU, None if none does."""
    return next((p.wall_s for p in curve if p.miou >= target), None)


def best_within(curve: list[Point], seconds: float) -> float | None:
    """Best mIoU among the epochs finished within ``seconds``, None if none finished."""
    scores = [p.miou for p in curve if p.wall_s <= seconds]
    return max(scores) if scores else None


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


def summarise(reference: list[Point], dist_seg: list[Point]) -> dict[str, Any]:
    """Target, times to target, their ratio and best mIoU within the reference's total wall-clock."""
    target = reference[-1].miou
    budget = reference[-1].wall_s
    ref_time, ds_time = time_to(reference, target), time_to(dist_seg, target)
    ref_best, ds_best = best_within(reference, budget), best_within(dist_seg, budget)
    return {
        "target_mIoU": _round(target),
        "reference_total_s": round(budget, 2),
        "reference_time_to_target_s": _round(ref_time, 2),
        "dist_seg_time_to_target_s": _round(ds_time, 2),
        "time_to_target_ratio": ratio(ds_time, ref_time) if ds_time is not None and ref_time else None,
        "reference_best_mIoU_within_reference_time": _round(ref_best),
        "dist_seg_best_mIoU_within_reference_time": _round(ds_best),
        "best_mIoU_ratio": ratio(ds_best, ref_best) if ds_best is not None and ref_best else None,
        "dist_seg_total_s": round(dist_seg[-1].wall_s, 2),
        "dist_seg_best_mIoU": _round(max(p.miou for p in dist_seg)),
    }


def dist_seg_vs(summary: dict[str, Any]) -> dict[str, Any]:
    """dist_seg's side of one reference's summary: time to its target and mIoU within its wall-clock."""
    return {"time_to_target_s": summary["dist_seg_time_to_target_s"],
            "time_to_target_ratio": summary["time_to_target_ratio"],
            "best_mIoU_within_reference_time": summary["dist_seg_best_mIoU_within_reference_time"],
            "best_mIoU_ratio": summary["best_mIoU_ratio"]}


def run(ctx: Context) -> list[Record]:
    plan = PLANS[ctx.sizes.name]
    root = (ctx.footage_root or DEFAULT_DATA_ROOT).resolve()
    split = choose_split(root)
    suite_dir = ctx.suite_dir(NAME)
    data = root if plan.frames_per_sequence is None else \
        subsample(root, split[0] + split[1], plan.frames_per_sequence, suite_dir / "data")
    ctx.log(f"  data {root} ({'all frames' if data == root else f'~{plan.frames_per_sequence} frames/sequence'}), "
            f"train {', '.join(split[0])}, val {', '.join(split[1])}, {plan.epochs} epoch(s) each")
    ctx.log("  reference (original pipeline's way)")
    reference = run_reference(ctx, data, split, plan.epochs, suite_dir / "reference")
    ctx.log(f"  reference: final mIoU {reference[-1].miou:.4f} at {reference[-1].wall_s:.0f} s")
    peers: dict[str, list[Point]] = {}
    for recipe in PEERS:
        ctx.log(f"  {recipe} recipe")
        peers[recipe] = run_peer(ctx, recipe, data, split, plan.epochs, suite_dir / recipe)
        ctx.log(f"  {recipe}: final mIoU {peers[recipe][-1].miou:.4f} at {peers[recipe][-1].wall_s:.0f} s")
    ctx.log("  dist_seg")
    dist_seg = run_dist_seg(ctx, data, split, plan.epochs, suite_dir / "dist_seg")
    if not dist_seg:
        raise RuntimeError(f"the dist_seg run wrote no validated epoch; see {suite_dir / 'dist_seg' / 'train.log'}")
    ctx.log(f"  dist_seg: final mIoU {dist_seg[-1].miou:.4f} at {dist_seg[-1].wall_s:.0f} s")
    summary = summarise(reference, dist_seg)
    peer_summaries = {recipe: summarise(curve, dist_seg) for recipe, curve in peers.items()}
    settings = {"model": "lraspp mobilenet_v3_large", "image_size": list(IMAGE_SIZE), "batch_size": BATCH_SIZE,
                "epochs": plan.epochs, "data_root": str(root), "train": list(split[0]), "val": list(split[1]),
                "frames_per_sequence": plan.frames_per_sequence, "cpu": ctx.machine.cpu,
                "curves": str(suite_dir / "time_to_accuracy.json"), "plot": str(suite_dir / "time_to_accuracy.png")}
    atomic.write_json(suite_dir / "time_to_accuracy.json", {
        "device": ctx.machine.device, "cpu": ctx.machine.cpu, "cores": ctx.machine.cores, "settings": settings,
        "summary": summary, "peer_summaries": peer_summaries,
        "curves": {"reference": [asdict(p) for p in reference], **{r: [asdict(p) for p in c] for r, c in peers.items()},
                   "dist_seg": [asdict(p) for p in dist_seg]}})
    line_chart(suite_dir / "time_to_accuracy.png",
               {"reference (original way)": [(p.wall_s, p.miou) for p in reference],
                **{f"{r} recipe": [(p.wall_s, p.miou) for p in c] for r, c in peers.items()},
                "dist_seg": [(p.wall_s, p.miou) for p in dist_seg]},
               title=f"val mIoU vs wall-clock, {ctx.machine.device}", x_label="seconds since process launch",
               y_label="val mIoU", hlines={"target": summary["target_mIoU"]})
    records = [
        ctx.record(NAME, "reference", "wall_clock_s", "s", [reference[-1].wall_s], settings,
                   {"final_mIoU": summary["target_mIoU"],
                    "time_to_target_s": summary["reference_time_to_target_s"],
                    "best_mIoU_within_reference_time": summary["reference_best_mIoU_within_reference_time"]}),
    ]
    for recipe, s in peer_summaries.items():
        records.append(ctx.record(
            NAME, f"{recipe} recipe", "wall_clock_s", "s", [peers[recipe][-1].wall_s], settings,
            {"final_mIoU": s["target_mIoU"], "time_to_target_s": s["reference_time_to_target_s"],
             "best_mIoU_within_own_time": s["reference_best_mIoU_within_reference_time"],
             **{f"dist_seg_{k}": v for k, v in dist_seg_vs(s).items()}}))
    records.append(ctx.record(NAME, "dist_seg", "wall_clock_s", "s", [dist_seg[-1].wall_s], settings,
                              {"final_mIoU": _round(dist_seg[-1].miou), "best_mIoU": summary["dist_seg_best_mIoU"],
                               **dist_seg_vs(summary)}))
    return records
