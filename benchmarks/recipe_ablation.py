"""Recipe ablation on real footage: dist_seg runs that differ by one recipe switch, mIoU over wall-clock.

``python benchmarks/recipe_ablation.py --out DIR --reference TTA_JSON [--per-sequence N]
[--size H W] [--epochs E] [--only NAME ...]`` trains the time-to-accuracy suite's dist_seg
configuration (LR-ASPP MobileNetV3-Large from scratch, batch 4, CamVid 0001TP + 0006R0 train,
Seq05VD val, dist_seg's defaults) once per variant, each a few ``--set`` overrides away from
the defaults, and writes ``DIR/ablation.json``: each variant's curve (epoch, seconds since
launch, val mIoU), its best mIoU, the seconds it took to reach the target and its best mIoU
within the reference's wall-clock. The target and that budget come from a time-to-accuracy
suite result (``--reference``: its ``time_to_accuracy.json``, the reference's 8-epoch mIoU
and total seconds on this machine); without it the target is the ``defaults`` variant's final
mIoU. ``--per-sequence N`` trains on an evenly spaced subset (all frames by default). One run
per variant: read differences of a few points of mIoU as noise.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.reference_pipeline import DEFAULT_DATA_ROOT  # noqa: E402
from benchmarks.suites import time_to_accuracy as tta  # noqa: E402
from dist_seg import atomic  # noqa: E402

# Each variant: --set overrides on top of the suite's dist_seg configuration (dist_seg's defaults:
# AdamW 1e-3, 50 warm-up steps, poly, precise BN on 50 batches, flips + scale 0.75-1.5).
PHOTOMETRIC = ("training.augment.photometric.enabled=true",)
EMA = ("training.ema.enabled=true", "training.ema.decay=0.99")
OHEM = ("training.loss.type=ohem", "training.loss.ohem_min_kept=20000")
DICE = ("training.loss.dice_weight=0.5",)
LOVASZ = ("training.loss.lovasz_weight=0.5",)
VARIANTS: dict[str, tuple[str, ...]] = {
    "defaults": (),
    "lr_1e-4": ("training.learning_rate=1e-4", "training.warmup_iters=0"),  # the original pipeline's LR
    "lr_5e-4": ("training.learning_rate=5e-4",),
    "wide_scale": ("training.augment.scale_min=0.5", "training.augment.scale_max=2.0"),  # configs/david.yaml's
    "no_precise_bn": ("training.precise_bn_batches=0",),
    "precise_bn_20": ("training.precise_bn_batches=20",),
    "photometric": PHOTOMETRIC,
    "ema": EMA,
    "ohem": OHEM,
    "dice": DICE,
    "lovasz": LOVASZ,
    "all": PHOTOMETRIC + EMA + OHEM + DICE,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT)
    parser.add_argument("--per-sequence", type=int, default=None, help="frames per sequence (default: all)")
    parser.add_argument("--size", type=int, nargs=2, default=list(tta.IMAGE_SIZE))
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--only", nargs="*", choices=list(VARIANTS), help="variants to run (default: all)")
    parser.add_argument("--reference", type=Path, help="time_to_accuracy.json of a suite run: target and budget")
    parser.add_argument("--set", dest="common", action="append", default=[], metavar="KEY=VALUE",
                        help="an override for every variant (repeatable), e.g. to re-run against older defaults")
    parser.add_argument("--init-from", type=Path, help="also run variant 'init_from': the defaults started from "
                        "this checkpoint's matching weights (model.init_from), e.g. a synthetic pre-training")
    args = parser.parse_args()
    split = tta.choose_split(args.data_root)
    data = args.data_root if args.per_sequence is None else \
        tta.subsample(args.data_root, split[0] + split[1], args.per_sequence, args.out / "data")
    ctx = SimpleNamespace(device=torch.device("cpu"))  # all run_dist_seg asks of a benchmark context
    size = (f"training.image_size=[{args.size[0]}, {args.size[1]}]",)
    variants = {name: VARIANTS[name] for name in args.only or list(VARIANTS)}
    if args.init_from is not None:
        variants["init_from"] = (f"model.init_from={args.init_from.resolve()}",)
    # Variants from earlier invocations into the same --out stay (one at a time fits a busy day).
    previous = args.out / "ablation.json"
    results = json.loads(previous.read_text())["results"] if previous.exists() else {}
    for name, overrides in variants.items():
        overrides = (*args.common, *overrides)
        curve = tta.run_dist_seg(ctx, data, split, args.epochs, args.out / name, size + overrides)
        results[name] = {"overrides": list(overrides), "curve": [vars(p) for p in curve],
                         "best_miou": max(p.miou for p in curve)}
        print(name, round(results[name]["best_miou"], 4), [round(p.wall_s) for p in curve], flush=True)
        _write(args, results)  # after every variant: a stopped ablation keeps what it measured


def _target(args: argparse.Namespace, results: dict) -> tuple[float | None, float | None]:
    """(target mIoU, wall-clock budget): the reference's, or the defaults' final mIoU and no budget."""
    if args.reference is not None:
        summary = json.loads(args.reference.read_text())["summary"]
        return summary["target_mIoU"], summary["reference_total_s"]
    if "defaults" in results:
        return results["defaults"]["curve"][-1]["miou"], None
    return None, None


def _write(args: argparse.Namespace, results: dict) -> None:
    """``ablation.json``: the curves, plus each variant's time to target and best mIoU within the budget."""
    target, budget = _target(args, results)
    for result in results.values():
        curve = [tta.Point(**p) for p in result["curve"]]
        result["target"], result["budget_s"] = target, budget
        result["time_to_target_s"] = tta.time_to(curve, target) if target is not None else None
        result["best_miou_within_budget"] = tta.best_within(curve, budget) if budget is not None else None
    text = json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results}, indent=1)
    atomic.write_text(args.out / "ablation.json", text)


if __name__ == "__main__":
    main()
