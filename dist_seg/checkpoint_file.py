"""Checkpoint files: the format, atomic writes, rotation, best-model mirror, validated loading.

A checkpoint is a plain dict of tensors and builtins, so it loads with
``torch.load(weights_only=True)``; the model state dict is unwrapped (no ``module.`` /
``_orig_mod.`` prefixes) and the config travels inside as plain data, so a checkpoint
alone is enough to rebuild the model (``dist_seg.predict``).

Format version 2 (what :mod:`dist_seg.train.checkpointer` writes): the header (``format``,
``version``, ``model``, ``config``, ``class_names``, ``palette``, ``world_size``), the position
in one place (``epoch``, ``global_step``, ``best_metric``), and one entry per stateful part of
the run (``optimizer``, ``scaler``, ``metrics``, ``position``, ``rng``, and with EMA ``ema`` =
``{"module", "updates"}`` plus ``model_raw``). Version 1 files (``train_state`` and ``scheduler``
repeating the position, ``ema`` as bare weights) are read through :func:`upgrade_v1`.
"""

from __future__ import annotations

import os
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import atomic
from .errors import CheckpointError

FORMAT = "dist_seg.checkpoint"
VERSION = 2
REQUIRED_KEYS = ("format", "version", "model", "epoch", "global_step", "config")
# epoch_0007.pth: 7 epochs done; epoch_0008_batch_000120.pth: epoch 8 (one-based, as the log
# says), 120 batches into it; epoch_0007_step_000120.pth: the same position in the earlier
# naming (zero-based epoch), still ordered right for auto-resume.
_NAME = re.compile(r"^epoch_(\d+)(?:_(step|batch)_(\d+))?\.pth$")


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The user's module inside DDP and torch.compile wrappers."""
    while True:
        if isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def capture_rng_state() -> dict[str, Any]:
    """This process's RNG states, as weights_only-loadable data."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                  int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    random.setstate(_as_tuple(state["python"]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(value: Any) -> Any:
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


@dataclass
class CheckpointInfo:
    """A checkpoint file in the rotation, with the position it was taken at."""

    path: Path
    epoch: int  # completed epochs at the checkpoint
    step: int | None  # batches into the next epoch for a mid-epoch checkpoint, None at an epoch's end

    @property
    def mid_epoch(self) -> bool:
        return self.step is not None


def checkpoint_name(epoch: int, batch_in_epoch: int | None = None) -> str:
    """The file name for a position of ``epoch`` completed epochs (and ``batch_in_epoch`` batches into the next).

    ``epoch_0007.pth`` after 7 complete epochs; ``epoch_0008_batch_000120.pth`` for a stop at
    "epoch 8, batch 120", the numbers the log prints.
    """
    if batch_in_epoch is None:
        return f"epoch_{epoch:04d}.pth"
    return f"epoch_{epoch + 1:04d}_batch_{batch_in_epoch:06d}.pth"


def _parse(path: Path) -> CheckpointInfo | None:
    m = _NAME.match(path.name)
    if not m:
        return None
    epoch, kind, batch = int(m.group(1)), m.group(2), m.group(3)
    if kind is None:
        return CheckpointInfo(path, epoch, None)
    return CheckpointInfo(path, epoch - 1 if kind == "batch" else epoch, int(batch))


def list_checkpoints(directory: Path) -> list[CheckpointInfo]:
    """Checkpoints in ``directory``, oldest first (by position in training)."""
    found = []
    if directory.is_dir():
        found = [info for info in map(_parse, directory.iterdir()) if info is not None]
    return sorted(found, key=lambda c: (c.epoch, -1 if c.step is None else c.step))


def save_checkpoint(state: dict[str, Any], directory: Path, name: str, keep: int) -> Path:
    """Write ``state`` atomically as ``directory/name``, then prune.

    Pruning drops mid-epoch checkpoints that an epoch-end checkpoint has overtaken (they
    only served a resume of that epoch) and then all but the newest ``keep``.
    """
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    # The tensors are nearly all of the file: a full disk is named before anything is written.
    atomic.ensure_free_space(directory, state_bytes(state) + _PICKLE_MARGIN, f"checkpoint {name}")
    with atomic.atomic_open(path, "wb") as fh:
        torch.save({"format": FORMAT, "version": VERSION, **state}, fh)
    found = list_checkpoints(directory)
    done = max((c.epoch for c in found if not c.mid_epoch), default=-1)
    for old in found:
        if old.mid_epoch and old.epoch < done:
            old.path.unlink(missing_ok=True)
    for old in list_checkpoints(directory)[:-keep]:
        old.path.unlink(missing_ok=True)
    return path


# Pickle framing, RNG states and config on top of the tensor bytes.
_PICKLE_MARGIN = 1 << 20


def state_bytes(value: Any) -> int:
    """Bytes of every tensor in a (nested) checkpoint state: what ``torch.save`` will write, give or take the framing."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(state_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(state_bytes(v) for v in value)
    return 0


def mirror_best(source: Path, best_path: Path) -> None:
    """Make ``best_path`` a hard link to the checkpoint ``source`` where the filesystem allows, else a copy.

    Either way the mirror appears atomically (linked or copied to a temporary name, then
    renamed), and it outlives the rotation of ``source``: checkpoints are never rewritten in place.
    """
    temporary = atomic.temporary_name(best_path, "link")
    temporary.unlink(missing_ok=True)
    try:
        os.link(source, temporary)
    except OSError:  # no hard links here (some network and FUSE filesystems, another device)
        with atomic.atomic_open(best_path, "wb") as dst, open(source, "rb") as src:
            shutil.copyfileobj(src, dst)
        return
    os.replace(temporary, best_path)


def load_checkpoint(path: str | Path, key: str = "training.resume_from_checkpoint", mmap: bool = False
                    ) -> dict[str, Any]:
    """Load and check a dist_seg checkpoint; every failure is a CheckpointError saying what to do.

    ``key`` is the config key or command-line option that named ``path``, for the message when it does not exist.
    ``mmap`` maps the tensors instead of reading them: for a look at the config and metadata only.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{key}: checkpoint {path} does not exist; give the path of a checkpoint file "
                              "written by dist_seg.train")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:  # torch raises RuntimeError, EOFError, UnpicklingError... for damaged files
        raise CheckpointError(f"checkpoint {path} cannot be read ({type(exc).__name__}: {exc}); it is truncated, "
                              "corrupt or not a torch file: use an earlier checkpoint from the same directory") from exc
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        keys = sorted(state)[:8] if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"checkpoint {path} was not written by dist_seg (found {keys}); "
                              "to start from foreign weights use model.backbone_weights instead")
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {', '.join(missing)}; it is incomplete: use another one")
    if state["version"] > VERSION:
        raise CheckpointError(f"checkpoint {path} has format version {state['version']}, newer than this "
                              f"dist_seg understands ({VERSION}); upgrade dist_seg")
    return upgrade_v1(state, path) if state["version"] == 1 else state


# Version 1's train_state: the position and, beside it, the epoch's metric totals.
_V1_POSITION_KEYS = ("epoch", "batch_in_epoch", "global_step", "best_miou", "best_epoch")


def upgrade_v1(state: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """A version 1 checkpoint in the version 2 layout (in memory; the file is left as it is).

    Version 1 held the step three times (``global_step``, ``train_state``, ``scheduler``) and the
    epoch twice; they must agree, or the file is damaged.
    """
    state = dict(state, version=2)
    train_state = state.pop("train_state", None)
    scheduler = state.pop("scheduler", None)
    if train_state is not None:
        steps = {int(state["global_step"]), int(train_state["global_step"])}
        if scheduler is not None:
            steps.add(int(scheduler["step"] if "step" in scheduler else scheduler["last_epoch"]))
        if len(steps) > 1 or int(train_state["epoch"]) != int(state["epoch"]):
            raise CheckpointError(f"checkpoint {path}: its step or epoch counts disagree (steps {sorted(steps)}); "
                                  "it is damaged: use another one")
        state["position"] = {"batch_in_epoch": train_state["batch_in_epoch"], "best_epoch": train_state["best_epoch"]}
        state["best_metric"] = train_state["best_miou"]
        state["metrics"] = {k: v for k, v in train_state.items() if k not in _V1_POSITION_KEYS}
    if "ema_updates" in state:
        state["ema"] = {"module": state["ema"], "updates": state.pop("ema_updates")}
    elif isinstance(state.get("ema"), dict):  # an EMA state dict without its update count
        state["ema"] = {"module": state["ema"], "updates": 0}
    return state


def load_model_state(model: torch.nn.Module, state: dict[str, Any], path: str | Path) -> None:
    """Load a checkpoint's weights into an unwrapped model, naming mismatches as a CheckpointError."""
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint {path} does not fit the configured model ({exc}); "
                              "the model.* or dataset.classes settings differ from the run that wrote it") from exc
