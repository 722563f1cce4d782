"""What changed between a checkpoint's run and the run resuming it, and whether that is allowed.

A resumed run trains with the current config. Most changes are harmless and simply apply
(a new learning rate takes effect from the next step: the schedule multiplies the current
``training.learning_rate``); they are listed so the log says what happened. A few would
silently train something else and are refused unless ``training.resume_force`` is set:
other classes (or the same classes reordered), another model, another optimizer, and a split
that moves a sequence the checkpoint trained on into validation or test.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import Config, config_to_dict
from ..data.splits import Splits
from ..errors import CheckpointError

# Keys whose change says nothing about what is trained (where outputs go, how data is fed,
# devices, telemetry) or that a resume is expected to change.
_NOT_COMPARED = (
    "training.resume_from_checkpoint", "training.resume_force", "training.output_dir", "training.max_steps",
    "training.log_interval", "training.num_workers", "training.prefetch_factor", "training.persistent_workers",
    "training.val_batch_size", "training.val_interval", "training.visualization_interval",
    "training.num_visualizations", "training.max_checkpoints", "training.force_resplit",
    "dataset.root", "dataset.test_root", "dataset.cache_dir", "dataset.cache_workers", "dataset.use_cache",
    "dataset.cache_images", "model.backbone_weights", "backend", "telemetry",
)
_OTHER_MODEL = "the checkpoint does not fit the configured model (it holds the weights of another one)"
# Keys whose change makes the checkpoint's state mean something else. A custom model's own
# keys are not among them: what they mean is the model's business (a test hook, a dropout
# rate); a change that alters the weights' shapes fails when the weights are loaded.
_REFUSED = {
    **{f"model.{key}": _OTHER_MODEL for key in ("type", "backbone", "activation", "output_stride", "separable",
                                                   "arch", "encoder")},
    "dataset.classes": "the checkpoint's output channels stand for other classes",
    "training.optimizer": "the checkpoint's optimizer state belongs to another optimizer (with force it starts afresh)",
}


class _Unset:
    def __repr__(self) -> str:
        return "(unset)"


_UNSET = _Unset()


@dataclass
class ResumeChanges:
    """Differences between the checkpoint's config and this run's, sorted by what is done about them."""

    applied: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    optimizer_changed: bool = False


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested config data as ``{"section.key": value}``."""
    if isinstance(value, dict):
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    return {prefix: value}


def _section(key: str, table: Sequence[str] | dict) -> str | None:
    return next((s for s in table if key == s or key.startswith(s + ".")), None)


def _schema_default(key: str) -> Any:
    """The plain default of the dotted config ``key`` (what a config that predates the key behaves as)."""
    section: Any = Config
    *path, name = key.split(".")
    for part in path:
        section = typing.get_type_hints(section).get(part)
        if section is None or not dataclasses.is_dataclass(section):
            return _UNSET
    for f in dataclasses.fields(section):
        if f.name == name and (f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING):
            value = f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
            return json.loads(json.dumps(value, default=str)) if not dataclasses.is_dataclass(value) else _UNSET
    return _UNSET


def compare_resume(saved: dict[str, Any], cfg: Config, *, saved_classes: Sequence[str] | None,
                   class_names: Sequence[str], trained_sequences: Sequence[str] | None,
                   held_out_sequences: Sequence[str]) -> ResumeChanges:
    """Sort every difference between the checkpoint's config ``saved`` and ``cfg`` into applied or refused.

    ``trained_sequences`` are the training sequences stored in the checkpoint (None for
    checkpoints that predate them); ``held_out_sequences`` this run's val and test sequences.
    """
    changes = ResumeChanges()
    old, new = flatten(saved), flatten(config_to_dict(cfg))
    refused: dict[str, list[str]] = {}
    for key in sorted(old.keys() | new.keys()):
        # A key missing from the checkpoint's config did not exist yet when it was written: it had the default.
        before, after = old.get(key, _schema_default(key)), new.get(key, _UNSET)
        if before == after or _section(key, _NOT_COMPARED):
            continue
        what = f"{key} {before!r} -> {after!r}"
        section = _section(key, _REFUSED)
        if section is None:
            changes.applied.append(what)
        else:
            refused.setdefault(section, []).append(what)
    if saved_classes is not None and list(saved_classes) != list(class_names) and "dataset.classes" not in refused:
        refused["dataset.classes"] = [f"class names {list(saved_classes)} -> {list(class_names)}"]
    changes.optimizer_changed = "training.optimizer" in refused
    changes.refused = [f"{', '.join(whats)}: {_REFUSED[section]}" for section, whats in refused.items()]
    if trained_sequences is not None:
        leaked = sorted(set(trained_sequences) & set(held_out_sequences))
        if leaked:
            changes.refused.append(
                f"sequence(s) {', '.join(leaked)} were trained on but are now in the validation or test split "
                "(the dataset or dataset.split changed): their scores would be inflated; name the old "
                "split in dataset.split.val / test")
    return changes


def check_resume(state: dict[str, Any], path: Path, cfg: Config, splits: Splits | None,
                 class_names: Sequence[str], *, warn: Callable[[str], None],
                 log: Callable[[str], None]) -> ResumeChanges:
    """Refuse (CheckpointError) a resume from ``state`` that would train something else, unless forced.

    ``splits`` are this run's (planned or written); their val and test sequences must not hold
    a sequence the checkpoint trained on. Forced refusals go to ``warn``, applied changes to
    ``log``. Returns the changes (``optimizer_changed``: the optimizer state must not be loaded).
    """
    held_out: list[str] = []
    if splits is not None:
        # Test sequences from dataset.test_root are another dataset: a shared name is no leak.
        test = splits.test if cfg.dataset.test_root is None else ()
        held_out = [seq.name for seq in (*splits.val, *test)]
    changes = compare_resume(state["config"], cfg, saved_classes=state.get("class_names"), class_names=class_names,
                             trained_sequences=state.get("train_sequences"), held_out_sequences=held_out)
    if changes.refused and not cfg.training.resume_force:
        raise CheckpointError(f"cannot resume from {path}: " + "; ".join(changes.refused) +
                              ". Restore the checkpoint's settings, start a new training.output_dir, or set "
                              "training.resume_force: true to resume anyway")
    if changes.refused:
        warn("training.resume_force: resuming despite " + "; ".join(changes.refused))
    if changes.applied:
        log("resume: the checkpoint was trained with other settings; this run applies " + ", ".join(changes.applied))
    return changes
