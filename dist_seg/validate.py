"""``python -m dist_seg.validate CONFIG [--set KEY=VALUE ...]``: list every problem of the dataset.

Exit status 0 when the data is usable (warnings allowed), 1 when anything must be fixed.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from .cli_common import add_config_arguments, run_cli
from .config import load_config
from .data.validation import validate_dataset


def _main(argv: Sequence[str] | None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dist_seg.validate",
                                     description="Check every frame and mask of the dataset; list all problems.")
    add_config_arguments(parser)
    args = parser.parse_args(argv)
    report = validate_dataset(load_config(args.config, args.overrides), progress=True)
    print(report.format())
    return 1 if report.errors else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit status."""
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
