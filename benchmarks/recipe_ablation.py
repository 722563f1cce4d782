"""Recipe ablation on real footage: dist_seg runs that differ by one recipe switch, mIoU over wall-clock.

``python benchmarks/recipe_ablation.py --out DIR [--per-sequence N] [--size H W] [--epochs E]
[--only NAME ...]`` trains the time-to-accuracy suite's dist_seg configuration (LR-ASPP
MobileNetV3-Large from scratch, batch 4, CamVid 0001TP + 0006R0 train, Seq05VD val) once per
variant, on an evenly spaced subset of each sequence (a 2-core CPU cannot afford the full
suite per variant), and writes ``DIR/ablation.json``: each variant's curve (epoch, seconds
since launch, val mIoU), its best mIoU and the seconds it took to reach the baseline's final
mIoU. Numbers from a shared machine are noisy: read them as one run each.
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

# Each variant: --set overrides on top of the suite's dist_seg configuration.
PHOTOMETRIC = ("training.augment.photometric.enabled=true",)
EMA = ("training.ema.enabled=true", "training.ema.decay=0.99")
OHEM = ("training.loss.type=ohem", "training.loss.ohem_min_kept=20000")
PRECISE_BN = ("training.precise_bn_batches=10",)
HIGHER_LR = ("training.learning_rate=1e-3", "training.warmup_iters=20")
VARIANTS: dict[str, tuple[str, ...]] = {
    "baseline": (),
    "photometric": PHOTOMETRIC,
    "ema": EMA,
    "ohem": OHEM,
    "precise_bn": PRECISE_BN,
    "lr_1e-3": HIGHER_LR,
    "all": PHOTOMETRIC + EMA + OHEM + PRECISE_BN + HIGHER_LR,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT)
    parser.add_argument("--per-sequence", type=int, default=30)
    parser.add_argument("--size", type=int, nargs=2, default=list(tta.IMAGE_SIZE))
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--only", nargs="*", choices=list(VARIANTS))
    args = parser.parse_args()
    split = tta.choose_split(args.data_root)
    data = tta.subsample(args.data_root, split[0] + split[1], args.per_sequence, args.out / "data")
    ctx = SimpleNamespace(device=torch.device("cpu"))  # all run_dist_seg asks of a benchmark context
    size = (f"training.image_size=[{args.size[0]}, {args.size[1]}]",)
    results = {}
    for name in args.only or list(VARIANTS):
        curve = tta.run_dist_seg(ctx, data, split, args.epochs, args.out / name, size + VARIANTS[name])
        results[name] = {"overrides": list(VARIANTS[name]), "curve": [vars(p) for p in curve],
                         "best_miou": max(p.miou for p in curve)}
        print(name, round(results[name]["best_miou"], 4), [round(p.wall_s) for p in curve], flush=True)
        _write(args, results)  # after every variant: a stopped ablation keeps what it measured


def _write(args: argparse.Namespace, results: dict) -> None:
    """``ablation.json``: the curves, plus each variant's time to the baseline's final mIoU once it is known."""
    if "baseline" in results:
        target = results["baseline"]["curve"][-1]["miou"]
        for result in results.values():
            result["target"] = target
            result["time_to_target_s"] = tta.time_to([tta.Point(**p) for p in result["curve"]], target)
    text = json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results}, indent=1)
    atomic.write_text(args.out / "ablation.json", text)


if __name__ == "__main__":
    main()
