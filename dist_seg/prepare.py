"""``python -m dist_seg.prepare CONFIG [--set KEY=VALUE ...]``: check the data, write splits, build caches."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from .cli_common import add_config_arguments, run_cli
from .config import load_config


def _main(argv: Sequence[str] | None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dist_seg.prepare",
                                     description="Validate the dataset, write splits.json and build the caches.")
    add_config_arguments(parser)
    parser.add_argument("--shards", type=Path, metavar="OUT",
                        help="also write the cache as streaming shards into OUT (needs the stream extra; upload "
                             "OUT and point dataset.remote at it)")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    # Imported after the config is known good: a config typo should not wait for torch to import.
    from .data.pipeline import prepare
    from .paths import check_writable_folder, exclusive_output_folder
    from .train.preflight import check_dataset_untouched

    # splits.json goes there: found unwritable now, not after the cache build.
    check_writable_folder(Path(cfg.training.output_dir), "training.output_dir")
    check_dataset_untouched(cfg)
    # A running training owns its splits.json: a prepare with another split must not rewrite it.
    with exclusive_output_folder(Path(cfg.training.output_dir), "training.output_dir"):
        summary = prepare(cfg, log=lambda line: print(line, flush=True), progress=True)
    print(summary.format())
    if args.shards is not None:
        from .data.pipeline import write_split_shards

        manifest = write_split_shards(cfg, args.shards)
        print(f"shards: {manifest['frames']} frames of {len(manifest['sequences'])} sequences in {args.shards}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit status (1 with ``error: ...`` on bad config or data)."""
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
