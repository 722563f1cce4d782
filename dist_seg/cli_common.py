"""Shared plumbing for the command-line entry points: user errors become one clean line, not a traceback."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from collections.abc import Callable, Sequence

from .errors import DistSegError, FailedOnAnotherRank, user_message


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """``CONFIG`` plus repeatable ``--set KEY=VALUE`` overrides."""
    parser.add_argument("config", help="YAML config file (see configs/)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set training.epochs=2 (repeatable)")


def add_custom_model_argument(parser: argparse.ArgumentParser) -> None:
    """``--custom-model PKG.MODULE:CLASS``: the code that rebuilds a checkpoint's custom model, named by the user."""
    parser.add_argument("--custom-model", metavar="PKG.MODULE:CLASS",
                        help="import path of the custom model class for a checkpoint trained with one (a "
                             "checkpoint is data: the path stored inside it is never imported)")


def add_inference_arguments(parser: argparse.ArgumentParser) -> None:
    """``--tta``, ``--mode``, ``--crop``, ``--stride``, ``--precision``: how predict and evaluate label a frame."""
    from .runtime.device import PRECISIONS

    parser.add_argument("--tta", help="test-time augmentation, e.g. flip or flip,scales=0.75,1.0,1.25")
    parser.add_argument("--mode", choices=["whole", "slide"], default="whole",
                        help="whole: resize each frame to the network size; slide: overlapping windows at "
                             "the frame's own resolution")
    parser.add_argument("--crop", help="slide window HxW (default: the training image size)")
    parser.add_argument("--stride", help="slide step HxW (default: 2/3 of the crop)")
    parser.add_argument("--precision", choices=list(PRECISIONS),
                        help="what the model computes in (default: fp32 on a CPU, as an exported model does; on a "
                             "GPU the autocast dtype training uses, bf16 or fp16)")


def inference_settings(parser: argparse.ArgumentParser, args: argparse.Namespace):
    """The :class:`~dist_seg.eval.inference.InferenceSettings` asked for by :func:`add_inference_arguments`."""
    if args.mode == "whole" and (args.crop or args.stride):
        parser.error("--crop and --stride need --mode slide")
    from .eval.inference import InferenceSettings, parse_size, parse_tta

    flip, scales = parse_tta(args.tta)
    return InferenceSettings(flip=flip, scales=scales, mode=args.mode,
                             crop=parse_size(args.crop, "--crop") if args.crop else None,
                             stride=parse_size(args.stride, "--stride") if args.stride else None)


def run_cli(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """Call ``main``; print DistSegErrors as ``error: ...`` and return exit status 1.

    ``--debug`` anywhere in the arguments (or ``DIST_SEG_DEBUG=1``) adds the traceback, for developers.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("DIST_SEG_DEBUG", "") not in ("", "0")
    if "--debug" in args:
        args.remove("--debug")
    try:
        return main(args)
    except FailedOnAnotherRank:
        return 1  # rank 0 prints the cause
    except DistSegError as exc:
        if debug:
            traceback.print_exc()
        message = user_message(exc)
        print(f"error: {message}", file=sys.stderr, flush=True)
        _tell_torchrun(message)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr, flush=True)
        return 130


def _tell_torchrun(message: str) -> None:
    """Under torchrun, leave the clean message in its error file, so its summary names this rank and cause.

    Without the file torchrun reports every failed rank alike and shows no message.
    """
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path:
        return
    entry = {"message": f"error: {message}", "extraInfo": {"py_callstack": f"error: {message}",
                                                         "timestamp": str(int(time.time()))}}
    try:
        with open(path, "w", encoding="utf-8") as fh:
            json.dump({"message": entry}, fh)
    except OSError:
        pass  # the console line above already says it
