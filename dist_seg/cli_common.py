"""Shared plumbing for the command-line entry points: user errors become one clean line, not a traceback."""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

from .errors import DistSegError


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """``CONFIG`` plus repeatable ``--set KEY=VALUE`` overrides."""
    parser.add_argument("config", help="YAML config file (see configs/)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set training.epochs=2 (repeatable)")


def run_cli(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """Call ``main``; print DistSegErrors as ``error: ...`` and return exit status 1."""
    try:
        return main(argv)
    except DistSegError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr, flush=True)
        return 130
