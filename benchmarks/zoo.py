"""Model zoo table: size, cost, training speed, accuracy in equal time and export parity of native and SMP models.

    python benchmarks/zoo.py [--size 512x512] [--classes 13] [--pairs type:arch:encoder ...] [--json OUT.json]
    python benchmarks/zoo.py --size 192x256 --export --work DIR [--data-root CAMVID]
    python benchmarks/zoo.py --size 192x256 --train --epochs 4 --work DIR [--data-root CAMVID] [--budget-s S]

Columns, by what they cost:

* always: parameters and forward GFLOPs, counted on the meta device (``FlopCounterMode``:
  matmuls and convolutions, one image, forward only): seconds on any machine, no weights;
* ``--export``: each pair trains one epoch on 4 frames per sequence of the data
  (``python -m dist_seg.train``, the time-to-accuracy suite's configuration with the pair's
  model and ``--size``) and its checkpoint is exported with ``python -m dist_seg.export
  --format onnx``, whose parity check (ONNX Runtime vs PyTorch on real frames) gives the
  parity columns. Minutes on 2 cores; no timing in it;
* ``--train``: each pair trains ``--epochs`` epochs on all frames (train 0001TP + 0006R0,
  validate Seq05VD on CamVid), one after the other, each from a cold start; columns: training
  images/s (median over epochs of the trainer's own ``train_images_per_s``), best val mIoU
  within the same wall-clock for every pair (``--budget-s``, default the shortest run's total,
  seconds since launch including start-up, cache build and validation), best and final val
  mIoU, and the export parity of the best checkpoint. It times CPU work: run it on a quiet
  machine and name the CPU and its load.

``--data-root`` defaults to ``../shared/data/camvid_dev``; its ``classes.yaml`` gives the
classes (and so ``--classes``). SMP pairs need the zoo extra (``pip install -e '.[zoo]'``);
without it they are listed as skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import cpu_model  # noqa: E402
from benchmarks.reference_pipeline import DEFAULT_DATA_ROOT  # noqa: E402
from benchmarks.sizes import ZOO_PAIRS, model_config, pair_name  # noqa: E402
from benchmarks.suites import time_to_accuracy as tta  # noqa: E402
from dist_seg import atomic  # noqa: E402
from dist_seg.errors import ConfigError  # noqa: E402
from dist_seg.export import main as export_main  # noqa: E402
from dist_seg.models import build_model, describe_model  # noqa: E402
from dist_seg.train.summary import forward_flops, parameter_count  # noqa: E402

EXPORT_FRAMES_PER_SEQUENCE = 4


def parse_pair(text: str) -> tuple[str, str | None, str]:
    parts = text.split(":")
    if len(parts) == 2:
        return parts[0], None, parts[1]
    if len(parts) == 3 and parts[0] == "smp":
        return parts[0], parts[1], parts[2]
    raise argparse.ArgumentTypeError(f"expected type:backbone or smp:arch:encoder, got {text!r}")


def measure(pair: tuple[str, str | None, str], size: tuple[int, int], classes: int) -> dict:
    """Parameters and forward GFLOPs of one pair at ``size`` (meta device), or why it was skipped."""
    model_type, arch, name = pair
    cfg = model_config(pair)
    row = {"type": model_type, "arch": arch, "backbone": name, "height": size[0], "width": size[1]}
    try:
        with torch.device("meta"):
            model = build_model(cfg, classes)
    except ConfigError as exc:
        return {**row, "model": f"{model_type} {arch or ''} {name}".replace("  ", " "), "skipped": str(exc)}
    flops = forward_flops(model, size)
    return {**row, "model": describe_model(cfg), "params_m": parameter_count(model) / 1e6,
            "gflops": None if flops is None else flops / 1e9}


def overrides(pair: tuple[str, str | None, str], size: tuple[int, int]) -> tuple[str, ...]:
    """``--set`` items that turn the time-to-accuracy suite's dist_seg run into one of this pair at ``size``."""
    model_type, arch, name = pair
    items = [f"model.type={model_type}", f"model.backbone={name}", f"training.image_size=[{size[0]}, {size[1]}]"]
    if model_type == "smp":
        items += [f"model.arch={arch}", f"model.encoder={name}"]
    return tuple(items)


def export_parity(checkpoint: Path, out: Path) -> dict:
    """``python -m dist_seg.export --format onnx`` of ``checkpoint``; its parity figures or why it failed."""
    status = export_main(["--checkpoint", str(checkpoint), "--format", "onnx", "--out", str(out)])
    card = out / "model.json"
    if status != 0 or not card.exists():
        return {"export": "failed", "export_exit": status}
    parity = json.loads(card.read_text())["parity"]
    size = parity["sizes"][0]
    return {"export": "passed" if parity["passed"] else "FAILED", "parity_relative_logit_diff":
            size["relative_logit_diff"], "parity_class_mismatch_share": size["class_mismatch_share"]}


def train_pair(pair: tuple[str, str | None, str], data: Path, split: tuple[tuple[str, ...], tuple[str, ...]],
               epochs: int, size: tuple[int, int], work: Path) -> tuple[list[tta.Point], list[dict]]:
    """Train one pair with ``python -m dist_seg.train`` in a child process: its curve and history records."""
    ctx = SimpleNamespace(device=torch.device("cpu"))  # all run_dist_seg asks of a benchmark context
    curve = tta.run_dist_seg(ctx, data, split, epochs, work, overrides(pair, size))
    return curve, json.loads((work / "out" / "history.json").read_text())


def run_pairs(args: argparse.Namespace, rows: list[dict], size: tuple[int, int]) -> None:
    """Add the training / export columns to ``rows`` (in place), writing the JSON after each pair."""
    root = args.data_root.resolve()
    split = tta.choose_split(root)
    data = root
    if not args.train:
        data = tta.subsample(root, split[0] + split[1], EXPORT_FRAMES_PER_SEQUENCE, args.work / "data")
    epochs = args.epochs if args.train else 1
    for row in rows:
        if "skipped" in row:
            continue
        pair = (row["type"], row["arch"], row["backbone"])
        work = args.work / pair_name(pair)
        print(f"{row['model']}: {epochs} epoch(s) at {size[0]}x{size[1]}, load {os.getloadavg()[0]:.1f}", flush=True)
        try:
            curve, history = train_pair(pair, data, split, epochs, size, work)
        except RuntimeError as exc:
            row["train"] = f"failed: {str(exc).splitlines()[0]}"
            continue
        row.update(export_parity(work / "out" / "best_model.pth", work / "export"))
        if args.train:
            row.update(curve=[vars(p) for p in curve], total_s=curve[-1].wall_s,
                       best_mIoU=max(p.miou for p in curve), final_mIoU=curve[-1].miou,
                       train_img_s=statistics.median(r["train_images_per_s"] for r in history))
        if args.json:
            atomic.write_json(args.json, rows)
    score_in_equal_time(rows, args.budget_s)


def score_in_equal_time(rows: list[dict], budget_s: float | None) -> None:
    """Each trained row's best val mIoU within ``budget_s`` (default: the shortest run's total), in place."""
    trained = [r for r in rows if "curve" in r]
    if trained:
        budget = budget_s or min(r["total_s"] for r in trained)
        for r in trained:
            r["budget_s"] = budget
            r["mIoU_in_budget"] = tta.best_within([tta.Point(**p) for p in r["curve"]], budget)


def _num(value: float | None, fmt: str) -> str:
    return "n/a" if value is None else format(value, fmt)


def table(rows: list[dict]) -> str:
    """Markdown table; the training / export columns appear when any row has them."""
    exported = any("export" in r for r in rows)
    trained = any("train_img_s" in r for r in rows)
    head = ["model", "params (M)", "forward GFLOPs"]
    if trained:
        budget = next(r["budget_s"] for r in rows if "budget_s" in r)
        head += ["train img/s", f"best val mIoU within {budget:.0f} s", "best / final val mIoU", "run s"]
    if exported:
        head += ["ONNX parity: max rel. logit diff", "pixels differing"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['model']} | skipped: {r['skipped']} |" + " |" * (len(head) - 2))
            continue
        cells = [r["model"], f"{r['params_m']:.2f}", _num(r["gflops"], ".1f")]
        if trained:
            cells += [_num(r.get("train_img_s"), ".2f"), _num(r.get("mIoU_in_budget"), ".3f"),
                      f"{_num(r.get('best_mIoU'), '.3f')} / {_num(r.get('final_mIoU'), '.3f')}",
                      _num(r.get("total_s"), ".0f")]
        if exported:
            if "train" in r:
                cells += [r["train"], ""]
            elif r.get("export") == "failed":
                cells += [f"export failed (exit {r['export_exit']})", ""]
            else:
                cells += [f"{r['parity_relative_logit_diff']:.2g} ({r['export']})",
                          f"{100 * r['parity_class_mismatch_share']:.3f}%"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def classes_of(root: Path) -> int | None:
    """Number of classes in ``root/classes.yaml``, None without one."""
    path = root / "classes.yaml"
    return len(yaml.safe_load(path.read_text())["classes"]) if path.exists() else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="512x512", help="input HxW (default 512x512)")
    parser.add_argument("--classes", type=int, help="output classes (default: the data's with --train / --export, "
                        "else 13, DAVID)")
    parser.add_argument("--pairs", nargs="+", type=parse_pair, default=list(ZOO_PAIRS),
                        metavar="PAIR", help="type:backbone or smp:arch:encoder (default: six pairs)")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--export", action="store_true", help="ONNX export parity of a 1-epoch checkpoint per pair")
    mode.add_argument("--train", action="store_true", help="train every pair --epochs epochs: img/s, mIoU in "
                      "equal time, export parity of the trained checkpoint (needs a quiet machine)")
    parser.add_argument("--epochs", type=int, default=4, help="epochs per pair with --train (default 4)")
    parser.add_argument("--budget-s", type=float, help="equal-time budget in seconds (default: the shortest run)")
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT,
                        help=f"dataset in DAVID layout for --train / --export (default: {DEFAULT_DATA_ROOT})")
    parser.add_argument("--work", type=Path, help="folder for the runs of --train / --export")
    args = parser.parse_args(argv)
    height, width = (int(v) for v in args.size.lower().split("x"))
    if (args.train or args.export) and args.work is None:
        parser.error("--train and --export need --work DIR for the runs")
    classes = args.classes or ((args.train or args.export) and classes_of(args.data_root)) or 13
    torch.set_num_threads(1)
    rows = [measure(pair, (height, width), classes) for pair in args.pairs]
    if args.train or args.export:
        torch.set_num_threads(os.cpu_count() or 1)  # the export's parity check runs here
        run_pairs(args, rows, (height, width))
    print(f"\n{cpu_model()}, load {' '.join(f'{v:.2f}' for v in os.getloadavg())}; forward FLOPs per image at "
          f"{height}x{width} (HxW), {classes} classes, FlopCounterMode on meta\n")
    print(table(rows))
    if args.json:
        atomic.write_json(args.json, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
