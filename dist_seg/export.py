"""``python -m dist_seg.export --checkpoint CKPT --format onnx|torch-export [--out DIR]``.

Writes a deployable artifact (``model.onnx`` or ``model.pt2``) and its model card
(``model.json``). The artifact takes uint8 RGB images ``[B, 3, H, W]`` and returns class
ids ``[B, H, W]`` (uint8; int64 beyond 256 classes), plus the logits with ``--logits``;
the normalisation is inside. The batch is always dynamic, height and width with
``--dynamic``. Unless ``--no-check`` is given, the artifact is compared with the PyTorch
model on real (or synthetic) frames and the export fails, leaving no artifact, when
fewer than 99.9% of pixels agree or the logits differ by more than 1e-3 (relative).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from .cli_common import add_custom_model_argument, run_cli

# Largest export height or width: 8K frames. The example batch and the trace grow with the
# area, so a mistyped size would fail in an allocation (or be killed for memory) instead.
MAX_SIDE = 8192


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _side(text: str) -> int:
    value = _positive(text)
    if value > MAX_SIDE:
        raise argparse.ArgumentTypeError(f"must be <= {MAX_SIDE}, got {value}; export at the size the "
                                         "deployment feeds (with --dynamic it accepts any size)")
    return value


def _main(argv: Sequence[str] | None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dist_seg.export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a dist_seg checkpoint (e.g. outputs/x/best_model.pth)")
    parser.add_argument("--format", required=True, choices=["onnx", "torch-export"], dest="fmt")
    parser.add_argument("--out", default="export", help="output directory (default: ./export)")
    parser.add_argument("--height", type=_side, help="input height (default: the checkpoint's training.image_size)")
    parser.add_argument("--width", type=_side, help="input width (default: the checkpoint's training.image_size)")
    parser.add_argument("--dynamic", action="store_true", help="accept any height and width, not only the export size")
    parser.add_argument("--opset", type=_positive, help="ONNX opset (default: the exporter's own)")
    parser.add_argument("--ema", action="store_true", help="export the checkpoint's EMA weights")
    parser.add_argument("--logits", action="store_true", help="also output the logits [B, C, H, W] (float32)")
    parser.add_argument("--no-check", action="store_true", help="skip the parity check against PyTorch")
    add_custom_model_argument(parser)
    args = parser.parse_args(argv)
    if args.opset is not None and args.fmt != "onnx":
        parser.error("--opset applies to --format onnx only")

    from .deploy.artifact import ExportRequest, export_artifact
    from .deploy.onnx_export import check_opset
    from .paths import check_writable_folder, output_option

    check_opset(args.opset)
    args.out = output_option(args.out, "--out")
    check_writable_folder(args.out, "--out")

    export_artifact(ExportRequest(
        checkpoint=Path(args.checkpoint), format=args.fmt, out_dir=Path(args.out), height=args.height,
        width=args.width, dynamic_size=args.dynamic, opset=args.opset, ema=args.ema, with_logits=args.logits,
        check=not args.no_check, custom_model=args.custom_model,
    ))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit status."""
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
