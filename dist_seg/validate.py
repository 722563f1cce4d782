"""``python -m dist_seg.validate CONFIG [--set KEY=VALUE ...]``: list every problem of the config and the dataset.

Checks what training checks before its first step, without preparing anything: the model
section (type, backbone, activation, weights files; a custom model is built and run on one
blank sample on the CPU, built-in ones only on the meta device), the output folder and the
resume checkpoint, the split settings and whether the training split holds one batch, and
every frame and mask. Exit status 0 when the run can start (warnings allowed), 1 when
anything must be fixed.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from .cli_common import add_config_arguments, run_cli
from .config import Config, load_config
from .errors import DistSegError


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

    report = check_dataset(cfg.dataset, progress=True)
    checks: list[tuple[Callable[[Config], None], str]] = [
        (_check_model, "fix the model section of the config (or the --set override)"),
        (_check_output, "fix training.output_dir / training.resume_from_checkpoint"),
        (_check_training_split, "fix dataset.split or the training batch settings (or, for labels with nothing "
                                "to learn, dataset.mask_format / dataset.classes)"),
    ]
    for check, fix in reversed(checks):  # each goes first in the report, in this order
        try:
            check(cfg)
        except DistSegError as exc:
            report.problems.insert(0, Problem("config", Path(args.config), str(exc), fix))
    print(report.format())
    return 1 if report.errors else 0


def _check_model(cfg: Config) -> None:
    """What training refuses before its first step: the model section, a custom model's output, ``model.init_from``."""
    import torch

    from .models import build_model, check_model_config, describe_model
    from .models.init_from import check_init_from
    from .train.preflight import batch_norm_samples, check_model_output, check_trainable

    num_classes, image_size = cfg.dataset.num_classes, tuple(cfg.training.image_size)
    model_cfg = check_model_config(cfg.model, num_classes, image_size, batch_norm_samples(cfg))
    init_from = model_cfg.init_from if _starts_fresh(cfg) else None
    if model_cfg.is_custom:  # user code: built and run for real, on the CPU, as training would
        model = build_model(model_cfg, num_classes)
        check_model_output(model, num_classes, image_size, torch.device("cpu"), batch_size=batch_norm_samples(cfg),
                           model_name=describe_model(model_cfg))
        check_trainable(model, describe_model(model_cfg))
    elif init_from is not None:  # names and shapes are all init_from compares
        with torch.device("meta"):
            model = build_model(dataclasses.replace(model_cfg, backbone_weights=None), num_classes)
    if init_from is not None:
        check_init_from(model, init_from)


def _starts_fresh(cfg: Config) -> bool:
    """Whether training would start from fresh weights (so ``model.init_from`` applies), not resume."""
    from .checkpoint_file import list_checkpoints

    setting = cfg.training.resume_from_checkpoint
    return setting is None or (setting == "auto"
                               and not list_checkpoints(Path(cfg.training.output_dir) / "checkpoints"))


def _check_output(cfg: Config) -> None:
    """The output folder can be written, a named resume checkpoint is one, no earlier run would be overwritten."""
    from .train.preflight import check_fresh_output, check_run_paths

    check_run_paths(cfg)
    check_fresh_output(cfg)


def _check_training_split(cfg: Config) -> None:
    """The split settings leave a training split, it holds one optimizer step (of one process), and its
    masks hold a class to learn."""
    from .data.checks import check_training_labels, listing_problems, split_problems
    from .data.discovery import discover_all
    from .data.loader import check_training_frames
    from .data.splits import check_split_names, planned_splits

    ds = cfg.dataset
    listings = discover_all(ds)
    if any(listing_problems(listing, ds) for listing in listings) or split_problems(listings[0], ds):
        return  # check_dataset lists these
    check_split_names(listings[0].sequence_names, ds.split, test_from_root=len(listings) > 1)
    splits = planned_splits(listings[0], listings[1] if len(listings) > 1 else None, cfg)
    check_training_frames(splits.counts()["train"][1], cfg.training, world_size=1)
    check_training_labels([f for seq in splits.train for f in seq.frame_records()], ds)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit status."""
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
