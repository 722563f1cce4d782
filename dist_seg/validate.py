"""``python -m dist_seg.validate CONFIG [--set KEY=VALUE ...]``: list every problem of the config and the dataset.

Checks the model section (type, backbone, activation, custom import, weights file; no
weights allocated), the split names, and every frame and mask. Exit status 0 when the
run can start (warnings allowed), 1 when anything must be fixed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from .cli_common import add_config_arguments, run_cli
from .config import load_config
from .errors import ConfigError


def _main(argv: Sequence[str] | None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dist_seg.validate",
                                     description="Check the config's model and split keys and every frame and "
                                                 "mask of the dataset; list all problems.")
    add_config_arguments(parser)
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    # Imported after the config is known good: a config typo should not wait for torch to import.
    from .data.checks import check_dataset
    from .data.problems import Problem
    from .models import check_model_config

    report = check_dataset(cfg.dataset, progress=True)
    try:
        check_model_config(cfg.model, cfg.dataset.num_classes, tuple(cfg.training.image_size))
    except ConfigError as exc:
        report.problems.insert(0, Problem("config", Path(args.config), str(exc),
                                          "fix the model section of the config (or the --set override)"))
    print(report.format())
    return 1 if report.errors else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit status."""
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
