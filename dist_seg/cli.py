"""``dist-seg SUBCOMMAND ...``: one console script for every entry point of the package."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Subcommand:
    """A subcommand's module (imported only when run, so ``--help`` stays fast) and its one-line summary."""

    module: str
    summary: str


SUBCOMMANDS = {
    "train": Subcommand("dist_seg.train.cli", "train a model from a YAML config (also under torchrun)"),
    "prepare": Subcommand("dist_seg.prepare", "build or refresh the dataset caches and print a summary"),
    "validate": Subcommand("dist_seg.validate", "check a dataset and list every problem found"),
    "synth": Subcommand("dist_seg.synth.cli", "write a synthetic DAVID-style dataset (demo and test data)"),
    "predict": Subcommand("dist_seg.predict", "label images, sequences or dataset roots with a checkpoint"),
    "evaluate": Subcommand("dist_seg.evaluate", "score a checkpoint at native resolution (mIoU, video consistency)"),
    "export": Subcommand("dist_seg.export", "export a checkpoint to ONNX or torch.export, parity-checked"),
    "gpu-proc-sampler": Subcommand("dist_seg.telemetry.gpu_proc_sampler",
                                   "sample per-process GPU memory into a CSV file"),
}


def usage() -> str:
    """The console script's help: every subcommand with its summary."""
    width = max(map(len, SUBCOMMANDS))
    lines = [f"  {name:<{width}}  {cmd.summary}" for name, cmd in SUBCOMMANDS.items()]
    return ("usage: dist-seg SUBCOMMAND [ARGS...]\n\nsubcommands:\n" + "\n".join(lines)
            + "\n\nRun `dist-seg SUBCOMMAND --help` for a subcommand's options.")


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch to the subcommand's module ``main``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("-h", "--help"):
        print(usage())
        return 0
    if not args or args[0] not in SUBCOMMANDS:
        print(usage(), file=sys.stderr)
        if args:
            print(f"\nerror: unknown subcommand {args[0]!r}", file=sys.stderr)
        return 2
    module = importlib.import_module(SUBCOMMANDS[args[0]].module)
    return module.main(args[1:])


if __name__ == "__main__":
    sys.exit(main())
