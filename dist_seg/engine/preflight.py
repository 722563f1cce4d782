"""Checks that run before any data is prepared, so a mistake costs seconds, not a cache build or an epoch.

Each names the key or file at fault and the fix: an output folder that is a file or cannot be
written (or a read-only ``checkpoints/`` inside it), a resume checkpoint that does not exist,
and a model whose logits do not have the shape training needs (one forward pass of one sample).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from ..config import Config
from ..errors import CheckpointError, ConfigError


def check_writable_folder(folder: Path, key: str) -> None:
    """Prove ``folder`` is, or can be created as, a folder a file can be written to (``os.access`` lies to root).

    Nothing is created: a folder that does not exist yet is probed through its nearest existing
    parent, so a command refused later for another reason leaves no empty folder behind.
    """
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        if existing == folder:
            raise ConfigError(f"{key}: {folder} is a file, not a folder; choose a folder path (or move the file)")
        raise ConfigError(f"{key}: cannot write to {folder} ({existing} is a file, not a folder); choose another "
                          "folder (or move the file)")
    try:
        with tempfile.TemporaryFile(dir=existing, prefix=".write-probe."):
            pass
    except OSError as exc:
        raise ConfigError(f"{key}: cannot write to {folder} ({exc.strerror or exc}); make it writable or "
                          "choose another folder") from exc


def check_run_paths(cfg: Config) -> None:
    """The output folder (and its ``checkpoints/``) is writable; a named resume checkpoint exists."""
    out = Path(cfg.training.output_dir)
    check_writable_folder(out, "training.output_dir")
    if (out / "checkpoints").exists():
        check_writable_folder(out / "checkpoints", "training.output_dir (its checkpoints/ folder)")
    resume = cfg.training.resume_from_checkpoint
    if resume not in (None, "auto") and not Path(resume).is_file():
        raise CheckpointError(f"training.resume_from_checkpoint: {resume} does not exist; give the path of a "
                              "checkpoint file, or 'auto' to continue from the latest in training.output_dir")


def check_model_output(model: torch.nn.Module, num_classes: int, image_size: tuple[int, int],
                       device: torch.device) -> None:
    """One forward pass of one blank sample: the logits must be ``[1, num_classes, H, W]`` at the input's size.

    A wrong class count or output size would otherwise surface inside the loss, after the
    data is prepared, as a shape error that names neither the model nor the fix.
    """
    height, width = image_size
    was_training = model.training
    model.eval()  # one sample: BatchNorm must use its running statistics
    try:
        with torch.no_grad():
            out = model(torch.zeros(1, 3, height, width, device=device))
    except (torch.OutOfMemoryError, MemoryError) as exc:
        raise ConfigError(f"training.image_size {list(image_size)}: one sample does not fit in memory on {device} "
                          f"({exc}); lower training.image_size") from exc
    except RuntimeError as exc:
        if "allocate" in str(exc):
            raise ConfigError(f"training.image_size {list(image_size)}: one sample does not fit in memory on "
                              f"{device}; lower training.image_size") from exc
        raise ConfigError(f"model.type: the model fails on a [1, 3, {height}, {width}] input ({exc}); check the "
                          "model section and training.image_size") from exc
    finally:
        model.train(was_training)
    logits = out["out"] if isinstance(out, dict) else out
    expected = (1, num_classes, height, width)
    if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != expected:
        shape = list(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ConfigError(f"model.type: {type(model).__name__} returns logits of shape {shape} for a "
                          f"[1, 3, {height}, {width}] input; training needs {list(expected)} (one channel per "
                          f"class of dataset.classes, at the input's size): fix the model's num_classes or "
                          "upsample its output")
