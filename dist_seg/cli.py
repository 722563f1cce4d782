"""``dist-seg SUBCOMMAND ...``: one console script for train, prepare, validate, synth, predict and evaluate."""

from __future__ import annotations

import importlib
import sys
from typing import Sequence

SUBCOMMANDS = {
    "train": "dist_seg.train",
    "prepare": "dist_seg.prepare",
    "validate": "dist_seg.validate",
    "synth": "dist_seg.synth",
    "predict": "dist_seg.predict",
    "evaluate": "dist_seg.evaluate",
    "gpu-proc-sampler": "dist_seg.telemetry.gpu_proc_sampler",
}


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch to the subcommand's module ``main``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help") or args[0] not in SUBCOMMANDS:
        print("usage: dist-seg {" + ",".join(SUBCOMMANDS) + "} ...", file=sys.stderr)
        if args and args[0] not in ("-h", "--help"):
            print(f"error: unknown subcommand {args[0]!r}", file=sys.stderr)
            return 2
        return 0 if args else 2
    module = importlib.import_module(SUBCOMMANDS[args[0]])
    return module.main(args[1:])


if __name__ == "__main__":
    sys.exit(main())
