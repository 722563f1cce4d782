"""``python -m dist_seg.train CONFIG [--set KEY=VALUE ...]`` (also under torchrun)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from ..cli_common import add_config_arguments, run_cli
from ..config import load_config


def _main(argv: Sequence[str] | None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dist_seg.train", description=__doc__)
    add_config_arguments(parser)
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    # Imported after the config is known good: a config typo should not wait for torch to import.
    from .loop import StopReason
    from .run import run_training

    summary = run_training(cfg)
    # Like a shell's own Ctrl-C: a script running this stops too, although the progress is saved.
    return 130 if summary.status is StopReason.INTERRUPTED else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit status."""
    return run_cli(_main, argv)

