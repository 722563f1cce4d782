"""``model.init_from``: start a model from another run's weights, across class sets.

Loads every tensor of a dist_seg checkpoint (its ``"model"`` entry) or of a plain state
dict (a torchvision download, ``torch.save(model.state_dict())``) whose name and shape
match the new model. A module with any tensor whose shape differs (the classifier heads
when the class count changes) keeps its fresh initialisation as a whole, so a head is
never half loaded. Unlike resuming, nothing but weights is taken: no optimizer, schedule
or epoch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError
from .weights import read_state_dict, unwrap_key


@dataclass(frozen=True)
class InitReport:
    """What :func:`init_from` did, by state-dict key."""

    loaded: tuple[str, ...]
    reinitialised: tuple[str, ...]  # in both, shapes differ: their module keeps its fresh init
    skipped: tuple[str, ...]  # in the file only (e.g. torchvision's aux_classifier)
    missing: tuple[str, ...]  # in the model only: fresh init

    def describe(self, path: Path) -> str:
        def modules(keys: tuple[str, ...]) -> str:
            names = sorted({k.rsplit(".", 1)[0] for k in keys})
            return ", ".join(names) if names else "none"

        return (f"init_from {path}: loaded {len(self.loaded)} tensors; re-initialised (shape differs): "
                f"{modules(self.reinitialised)}; skipped (not in this model): {modules(self.skipped)}; "
                f"not in the file (fresh init): {modules(self.missing)}")


def check_init_from(model: nn.Module, path: str | Path) -> tuple[InitReport, dict[str, torch.Tensor]]:
    """What :func:`init_from` would load from ``path`` into ``model``, and those tensors; loads nothing.

    Works on a model built on the meta device (only names and shapes are compared), so
    ``validate`` can judge the file in a second. A missing or unreadable file, or one with
    no matching weight, raises :class:`CheckpointError` naming ``model.init_from``.
    """
    path = Path(path)
    source = {unwrap_key(k): v for k, v in read_state_dict(path, "model.init_from", CheckpointError).items()}
    target = model.state_dict()
    mismatched_modules = {k.rsplit(".", 1)[0] for k, v in source.items()
                          if k in target and tuple(v.shape) != tuple(target[k].shape)}
    loaded, reinitialised = [], []
    for key in target:
        if key not in source:
            continue
        (reinitialised if key.rsplit(".", 1)[0] in mismatched_modules else loaded).append(key)
    if not loaded:
        raise CheckpointError(f"model.init_from: no weight of {path} matches this model by name and shape; "
                              "was it saved from another architecture (model.type / model.backbone)?")
    report = InitReport(tuple(loaded), tuple(reinitialised),
                        tuple(k for k in source if k not in target),
                        tuple(k for k in target if k not in source))
    return report, {k: source[k] for k in loaded}


def init_from(model: nn.Module, path: str | Path, log: Callable[[str], None] = print) -> InitReport:
    """Load every matching weight of ``path`` into ``model`` (unwrapped), log and return what happened."""
    report, weights = check_init_from(model, path)
    model.load_state_dict(weights, strict=False)
    log(report.describe(Path(path)))
    return report
