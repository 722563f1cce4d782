"""Model zoo at a glance: parameters and forward GFLOPs of native and SMP models at one input size.

    python benchmarks/zoo.py [--size 512x512] [--classes 13] [--json OUT.json] [--pairs type:arch:encoder ...]

Everything is counted on the meta device (``FlopCounterMode``: matmuls and convolutions, one
image, forward only), so the table takes seconds on any machine, computes nothing and needs no
weights. SMP pairs need the zoo extra (``pip install -e '.[zoo]'``); without it they are
listed as skipped. No timings: throughput belongs to ``benchmarks/run.py`` on a GPU.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dist_seg.config import ModelConfig  # noqa: E402
from dist_seg.errors import ConfigError  # noqa: E402
from dist_seg.models import build_model, describe_model  # noqa: E402
from dist_seg.train.summary import forward_flops, parameter_count

# (model.type, model.arch, model.backbone / model.encoder)
DEFAULT_PAIRS = (
    ("lraspp", None, "mobilenet_v3_large"),
    ("deeplabv3plus", None, "resnet18"),
    ("smp", "Unet", "resnet34"),
    ("smp", "FPN", "efficientnet-b0"),
    ("smp", "FPN", "tu-convnext_tiny"),
    ("smp", "Segformer", "mit_b0"),
)


def parse_pair(text: str) -> tuple[str, str | None, str]:
    parts = text.split(":")
    if len(parts) == 2:
        return parts[0], None, parts[1]
    if len(parts) == 3 and parts[0] == "smp":
        return parts[0], parts[1], parts[2]
    raise argparse.ArgumentTypeError(f"expected type:backbone or smp:arch:encoder, got {text!r}")


def measure(pair: tuple[str, str | None, str], size: tuple[int, int], classes: int) -> dict:
    model_type, arch, name = pair
    if model_type == "smp":
        cfg = ModelConfig(type="smp", arch=arch, encoder=name)
    else:
        cfg = ModelConfig(type=model_type, backbone=name)
    row = {"type": model_type, "arch": arch, "backbone": name, "height": size[0], "width": size[1]}
    try:
        with torch.device("meta"):
            model = build_model(cfg, classes)
    except ConfigError as exc:
        return {**row, "model": f"{model_type} {arch or ''} {name}".replace("  ", " "), "skipped": str(exc)}
    flops = forward_flops(model, size)
    return {**row, "model": describe_model(cfg), "params_m": parameter_count(model) / 1e6,
            "gflops": None if flops is None else flops / 1e9}


def table(rows: list[dict]) -> str:
    lines = ["| model | params (M) | forward GFLOPs |", "|---|---:|---:|"]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['model']} | skipped: {r['skipped']} | |")
        else:
            gflops = "n/a" if r["gflops"] is None else f"{r['gflops']:.1f}"
            lines.append(f"| {r['model']} | {r['params_m']:.2f} | {gflops} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="512x512", help="input HxW (default 512x512)")
    parser.add_argument("--classes", type=int, default=13, help="output classes (default 13, DAVID)")
    parser.add_argument("--pairs", nargs="+", type=parse_pair, default=list(DEFAULT_PAIRS),
                        metavar="PAIR", help="type:backbone or smp:arch:encoder (default: six pairs)")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON")
    args = parser.parse_args(argv)
    height, width = (int(v) for v in args.size.lower().split("x"))
    torch.set_num_threads(1)
    rows = [measure(pair, (height, width), args.classes) for pair in args.pairs]
    print(f"forward FLOPs per image at {height}x{width} (HxW), {args.classes} classes, FlopCounterMode on meta\n")
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
