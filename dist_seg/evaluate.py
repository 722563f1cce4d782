"""``python -m dist_seg.evaluate --checkpoint CKPT [CONFIG] [--split S | --root DIR] [--out DIR]``, also under torchrun.

Scores a checkpoint at native resolution: each frame's logits are upsampled to its own
size and compared with its mask as annotated. Reports mIoU, per-class IoU, pixel accuracy,
frequency-weighted IoU, per-sequence metrics, the confusion matrix (CSV + picture) and the
video metrics VC_2 / VC_8 / VC_16 and flicker rate. The checkpoint alone is enough; the
frames come from the run's splits.json (``--split``, default test) or from any DAVID-layout
folder (``--root``). Under torchrun every rank takes whole sequences; rank 0 writes the report.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from .cli_common import add_custom_model_argument, add_inference_arguments, inference_settings, run_cli
from .config.schema import MAX_WORKERS
from .data.splits import SPLIT_NAMES
from .errors import CheckpointError, ConfigError

# Decoding processes per rank: more than a few per core only adds memory and start-up time.
WORKERS_PER_CORE = 4


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m dist_seg.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a dist_seg checkpoint (e.g. outputs/x/best_model.pth)")
    parser.add_argument("config", nargs="?", help="YAML config whose data to use (default: the checkpoint's own)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--split", choices=SPLIT_NAMES, default="test",
                       help="split of <output_dir>/splits.json to score (default test)")
    where.add_argument("--root", help="score every sequence of this DAVID-layout folder instead")
    parser.add_argument("--out", help="report folder (default: with CONFIG <output_dir>/eval/<split or root name>, "
                                      "else eval/<split or root name> next to the checkpoint)")
    add_inference_arguments(parser)
    add_custom_model_argument(parser)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2, help="image-decoding processes per rank (0 = inline)")
    parser.add_argument("--mask-format", choices=["rgb", "index"],
                        help="how masks store labels (default: the config's, else the checkpoint's)")
    parser.add_argument("--cache-dir", help="where to keep the native-resolution mask cache "
                                            "(default dataset.cache_dir, $DIST_SEG_CACHE or ~/.cache/dist_seg)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "rocm"],
                        help="where to run (auto: GPU when available)")
    return parser


def _main(argv: Sequence[str] | None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error("--batch-size must be >= 1")
    most = min(MAX_WORKERS, WORKERS_PER_CORE * (os.cpu_count() or 1))
    if not 0 <= args.workers <= most:
        parser.error(f"--workers must be from 0 to {most} ({WORKERS_PER_CORE} per core of this machine's "
                     f"{os.cpu_count()}, at most {MAX_WORKERS}), got {args.workers}")
    settings = inference_settings(parser, args)

    from . import atomic
    from .config import BackendConfig, load_config
    from .data.cache import CACHE_DIR_KEY
    from .eval.native import evaluate_checkpoint
    from .eval.report import format_table, write_report
    from .paths import check_outside_dataset, check_writable_folder, output_option
    from .runtime.device import describe_precision, inference_runtime
    from .runtime.distributed import setup_distributed, teardown_distributed

    config = load_config(args.config) if args.config else None
    # The user's own config may name the custom model's code; the checkpoint's copy never does.
    custom_model = args.custom_model or (config.model.type if config is not None and config.model.is_custom else None)
    if not Path(args.checkpoint).is_file():
        raise CheckpointError(f"--checkpoint {args.checkpoint} does not exist; pass a .pth written by dist_seg.train")
    # Before the evaluation, not after it: a report folder that cannot be written would lose its work.
    out = output_option(args.out, "--out") if args.out is not None else _default_out(args, config)
    out_key = "--out" if args.out is not None else f"--out (default {out})"
    check_writable_folder(out, out_key)
    cache_dir = output_option(args.cache_dir, "--cache-dir") if args.cache_dir is not None else None
    data_root = Path(args.root) if args.root else (config.dataset.root if config is not None else None)
    if data_root is not None:
        labels = config.dataset.labels if config is not None else "Labels"
        images = config.dataset.images if config is not None else "Images"
        check_outside_dataset(out, data_root, (images, labels), out_key)
        if cache_dir is not None:
            check_outside_dataset(cache_dir, data_root, (images, labels), "--cache-dir")
    atomic.remove_stale_temporaries(out)  # what a killed earlier evaluation left
    # Only a file is refused here: a read-only cache folder still serves fresh native masks.
    if cache_dir is not None and cache_dir.exists() and not cache_dir.is_dir():
        raise ConfigError(f"--cache-dir: {args.cache_dir} is a file, not a folder; choose a folder path (or move "
                          "the file)")
    backend = BackendConfig(target=args.device, compile=False)
    ctx = setup_distributed(backend, device_key="--device")
    try:
        runtime = inference_runtime(ctx.device, args.precision)
        log = print if ctx.is_main else (lambda _m: None)
        log(f"evaluate: {describe_precision(runtime, args.precision)}")
        result = evaluate_checkpoint(args.checkpoint, ctx, runtime, config=config, split=args.split, root=args.root,
                                     settings=settings, batch_size=args.batch_size, num_workers=args.workers,
                                     mask_format=args.mask_format, cache_dir=args.cache_dir,
                                     cache_key="--cache-dir" if args.cache_dir else CACHE_DIR_KEY, log=log,
                                     progress=ctx.is_main and sys.stderr.isatty(), custom_model=custom_model)
        if ctx.is_main:
            write_report(result, out)
            print(format_table(result))
            chosen = "" if args.out is not None else " (the default; choose another folder with --out)"
            print(f"report: {out}/report.md (metrics.json, confusion.csv, confusion.png){chosen}")
    finally:
        teardown_distributed(ctx)
    return 0


def _default_out(args: argparse.Namespace, config) -> Path:
    """``eval/<split or root name>`` in the config's output folder, else next to the checkpoint.

    Never a folder named inside the checkpoint: that is where its run wrote, on a machine that
    may not be this one (or a path someone chose for this file to write to).
    """
    name = Path(os.path.abspath(args.root)).name if args.root else args.split
    if config is not None:
        return Path(config.training.output_dir) / "eval" / name
    folder = Path(os.path.abspath(args.checkpoint)).parent
    # checkpoints/epoch_0003.pth belongs to the run folder above it, as best_model.pth does.
    return (folder.parent if folder.name == "checkpoints" else folder) / "eval" / name


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit status."""
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
