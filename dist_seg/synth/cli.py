"""``python -m dist_seg.synth OUT_DIR``: write a synthetic DAVID-style dataset and summarise it."""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Sequence
from pathlib import Path

from ..data.discovery import IMAGE_SUFFIXES
from . import MIN_SIZE, generate_dataset


def parse_size(text: str) -> tuple[int, int]:
    """``"600x800"`` -> ``(600, 800)``: height x width, both at least ``MIN_SIZE`` pixels."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if match is None:
        raise argparse.ArgumentTypeError(f"expected HEIGHTxWIDTH such as 600x800, got {text!r}")
    h, w = int(match[1]), int(match[2])
    if min(h, w) < MIN_SIZE:
        raise argparse.ArgumentTypeError(f"height and width must both be at least {MIN_SIZE} pixels, got {text!r}")
    return h, w


def _count(minimum: int) -> Callable[[str], int]:
    """An argparse type for integers of at least ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m dist_seg.synth",
        description="Write synthetic DAVID-style driving sequences (Images/ and Labels/ with the exact DAVID "
                    "palette), deterministic from the seed.",
    )
    parser.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="dataset root to write (created if missing)")
    parser.add_argument("--sequences", type=_count(1), default=3, help="number of sequences (default 3)")
    parser.add_argument("--frames", type=_count(1), default=8, help="frames per sequence (default 8)")
    parser.add_argument("--size", type=parse_size, default=(120, 160), metavar="HxW",
                        help="frame size, height x width (default 120x160; DAVID is 600x800)")
    parser.add_argument("--seed", type=_count(0), default=0, help="random seed (default 0)")
    parser.add_argument("--mask-format", choices=("rgb", "index"), default="rgb",
                        help="labels as palette-coloured RGB PNGs (default) or single-channel class-id PNGs")
    parser.add_argument("--image-ext", choices=IMAGE_SUFFIXES, default=".png", help="frame file type (default .png)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        summary = generate_dataset(args.out_dir, sequences=args.sequences, frames=args.frames, size=args.size,
                                   seed=args.seed, mask_format=args.mask_format, image_ext=args.image_ext)
    except OSError as exc:
        parser.exit(1, f"{parser.prog}: error: cannot write the dataset under {args.out_dir}: {exc}; "
                       "choose a writable OUT_DIR\n")
    print(summary.describe())
    return 0
