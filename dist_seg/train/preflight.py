"""Checks that run before any data is prepared, so a mistake costs seconds, not a cache build or an epoch.

Each names the key or file at fault and the fix: an output folder that is a file or cannot be
written (or a read-only ``checkpoints/`` inside it), a resume checkpoint that does not exist or
is not a torch archive, an earlier run's checkpoints that a fresh run would overwrite, and a
model that fails on one sample or whose logits do not have the shape training needs (one
forward pass, with BatchNorm as training will run it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import zipfile
from pathlib import Path

import torch

from ..checkpoint_file import list_checkpoints, load_checkpoint
from ..config import Config, config_to_dict
from ..data.cache import CACHE_DIR_KEY, cache_root
from ..data.checks import listing_problems
from ..data.discovery import discover_all
from ..data.palette import Palette
from ..data.splits import planned_splits
from ..errors import CheckpointError, ConfigError, DistSegError, describe_raised
from ..models import check_model_config, describe_model
from ..models.batchnorm import one_sample_mode
from ..paths import check_not_symlink, check_outside_dataset, check_writable_folder, exclusive_output_folder
from ..runtime.device import Runtime
from ..runtime.distributed import DistContext
from ..runtime.memory import memory_needed_by
from ..telemetry.memlog import FILE_NAME as MEMORY_LOG
from .outputs import RunOutputs
from .resume_check import check_resume, flatten


def check_run_paths(cfg: Config) -> None:
    """The output folder (and its ``checkpoints/``) is writable and outside the dataset's frame and label folders,
    as is the cache; no symlink sits where the memory log is appended; a named resume checkpoint exists.
    Creates nothing."""
    out = Path(cfg.training.output_dir)
    check_writable_folder(out, "training.output_dir")
    check_dataset_untouched(cfg)
    check_not_symlink(out / MEMORY_LOG, "training.output_dir")
    if (out / "checkpoints").exists():
        check_writable_folder(out / "checkpoints", "training.output_dir (its checkpoints/ folder)")
    resume = cfg.training.resume_from_checkpoint
    if resume in (None, "auto"):
        return
    if not Path(resume).is_file():
        raise CheckpointError(f"training.resume_from_checkpoint: {resume} does not exist; give the path of a "
                              "checkpoint file, or 'auto' to continue from the latest in training.output_dir")
    # torch.save writes a zip archive whose directory is at its end: a cheap look finds a
    # truncated or foreign file now instead of after the cache build.
    if not zipfile.is_zipfile(resume):
        raise CheckpointError(f"training.resume_from_checkpoint: {resume} is not a checkpoint (not a torch.save "
                              "archive: truncated, or another kind of file); use an earlier checkpoint from the "
                              "same checkpoints/ folder, or 'auto'")


def check_dataset_untouched(cfg: Config) -> None:
    """Neither the output folder nor the cache lies inside a dataset root's frame or label folder."""
    ds = cfg.dataset
    for root in (ds.root, ds.test_root):
        if root is not None:
            check_outside_dataset(Path(cfg.training.output_dir), Path(root), (ds.images, ds.labels),
                                  "training.output_dir")
            check_outside_dataset(cache_root(ds), Path(root), (ds.images, ds.labels), CACHE_DIR_KEY)


def check_fresh_output(cfg: Config) -> None:
    """A run that resumes nothing must not overwrite an earlier run's checkpoints in ``training.output_dir``."""
    if cfg.training.resume_from_checkpoint is not None:
        return
    out = Path(cfg.training.output_dir)
    found = list_checkpoints(out / "checkpoints")
    if found:
        raise DistSegError(f"{out} already holds checkpoints of an earlier run ({found[-1].path.name}); set "
                           "training.resume_from_checkpoint: auto to continue it, or choose another "
                           "training.output_dir")


def check_model_output(model: torch.nn.Module, num_classes: int, image_size: tuple[int, int],
                       device: torch.device, *, batch_size: int = 2, model_name: str | None = None,
                       runtime: Runtime | None = None) -> None:
    """One forward pass of one blank sample: the logits must be ``[1, num_classes, H, W]`` at the input's size.

    A wrong class count or output size would otherwise surface inside the loss, after the
    data is prepared, as a shape error that names neither the model nor the fix; so would a
    forward that raises. ``batch_size`` is what one BatchNorm layer normalises over in a
    training step (the per-rank batch, or the global one under SyncBatchNorm): when it is 1
    the pass runs BatchNorm on batch statistics, as training will (nothing is changed).
    ``runtime``: the pass runs under its autocast and memory format, as training's do.
    ``model_name`` names the model in messages (default: its class name).
    """
    name = model_name or type(model).__name__
    height, width = image_size
    shape = f"[1, 3, {height}, {width}]"
    autocast = runtime.autocast() if runtime is not None else contextlib.nullcontext()
    memory_format = runtime.memory_format if runtime is not None else torch.contiguous_format
    try:
        with memory_needed_by(f"training.image_size {list(image_size)}: one sample", device,
                              "lower training.image_size"), torch.no_grad(), one_sample_mode(model, batch_size, name):
            x = torch.zeros(1, 3, height, width, device=device).contiguous(memory_format=memory_format)
            with autocast:
                out = model(x)
    except DistSegError:
        raise
    except Exception as exc:  # noqa: BLE001 - a custom forward may raise anything; the message names it
        raise _forward_error(name, shape, exc) from exc
    logits = out["out"] if isinstance(out, dict) else out
    expected = (1, num_classes, height, width)
    if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != expected:
        got = list(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ConfigError(f"model.type: {name} returns logits of shape {got} for a {shape} input; training needs "
                          f"{list(expected)} (one channel per "
                          f"class of dataset.classes, at the input's size): fix the model's num_classes or "
                          "upsample its output")


def _forward_error(name: str, shape: str, exc: Exception) -> ConfigError:
    return ConfigError(f"model.type: {name} fails on a {shape} input: {describe_raised(exc)}; fix the model's "
                       "forward, or the model section or training.image_size (--debug shows the traceback)")


def batch_norm_samples(cfg: Config, synced_ranks: int | None = None) -> int:
    """How many samples one BatchNorm layer normalises over in a training step (what :func:`check_model_output` needs).

    The per-rank ``training.batch_size``, times the ranks SyncBatchNorm syncs over.
    ``synced_ranks=None``: not known yet (no process group): with ``backend.sync_bn`` the
    ranks may make up a batch of one, so this answers at least 2 and the check waits.
    """
    batch = cfg.training.batch_size
    if synced_ranks is None:
        return max(batch, 2) if cfg.backend.sync_bn else batch
    return batch * synced_ranks


def check_trainable(model: torch.nn.Module, model_name: str) -> None:
    """The model has a parameter to train (the optimizer refuses an empty list, after the data is prepared)."""
    if not any(p.requires_grad for p in model.parameters()):
        raise ConfigError(f"model.type: {model_name} has no trainable parameters (none, or every one has "
                          "requires_grad=False); leave at least the head unfrozen in the model's constructor")


def check_before_start(cfg: Config) -> Config:
    """Checks that need no process group: the model config (returned with its defaults filled in) and the paths."""
    cfg = dataclasses.replace(cfg, model=check_model_config(cfg.model, cfg.dataset.num_classes,
                                                            tuple(cfg.training.image_size), batch_norm_samples(cfg)))
    check_run_paths(cfg)
    return cfg


def check_run_start(cfg: Config, ctx: DistContext, out: RunOutputs, cleanup: contextlib.ExitStack) -> Path | None:
    """Every rank's checks before any data work; returns the checkpoint to resume from (None: a fresh run).

    The ranks run one config; rank 0 holds the output folder for the run's life (a second run into
    it stops here, before it writes anything); every rank resumes from rank 0's choice (another
    node's listing of a shared output folder can lag behind); a resume that would be refused is
    refused now, while splits.json, config.yaml and history are as they were.
    """
    ctx.fail_together(lambda: check_same_config(cfg, ctx))
    ctx.fail_together(lambda: _hold_output_folder(cfg, ctx, out, cleanup))
    resume_from = ctx.gather_objects(_resume_path(cfg, out))[0]
    if resume_from is not None:
        ctx.fail_together(lambda: _check_resume_first(cfg, ctx, resume_from))
    return resume_from


def check_model(model: torch.nn.Module, cfg: Config, runtime: Runtime, device: torch.device,
                synced_ranks: int = 1) -> None:
    """The built model gives logits of the right shape for one step as training runs it, and has weights to train."""
    name = describe_model(cfg.model)
    check_model_output(model, cfg.dataset.num_classes, tuple(cfg.training.image_size), device,
                       batch_size=batch_norm_samples(cfg, synced_ranks), model_name=name, runtime=runtime)
    check_trainable(model, name)


# Where a node keeps its own local files: nodes may name different folders (local disks) and
# still train the same thing, so these are not compared across ranks.
NODE_LOCAL_KEYS = frozenset({"dataset.cache_dir", "dataset.local_cache"})


def check_same_config(cfg: Config, ctx: DistContext) -> None:
    """Every rank runs the config rank 0 runs; otherwise ConfigError (on every rank) naming the keys that differ.

    Ranks with another learning rate, split or model would train something no single config
    describes (and DDP would average gradients of different losses) without any error. The
    node-local folders in :data:`NODE_LOCAL_KEYS` may differ between nodes.
    """
    if not ctx.is_distributed:
        return
    flat = [{k: v for k, v in flatten(c).items() if k not in NODE_LOCAL_KEYS}
            for c in ctx.gather_objects(config_to_dict(cfg))]
    differing = sorted({k for rank in flat[1:] for k in rank.keys() | flat[0].keys() if rank.get(k) != flat[0].get(k)})
    if not differing:
        return
    shown = []
    for key in differing[:5]:
        values = ", ".join(f"rank {r}: {f.get(key)!r}" for r, f in enumerate(flat))
        shown.append(f"{key} ({values})")
    more = f" and {len(differing) - 5} more" if len(differing) > 5 else ""
    raise ConfigError(f"the {ctx.world_size} ranks were started with different configs: {'; '.join(shown)}{more}. "
                      "Start every rank with the same config file and --set overrides")


def _hold_output_folder(cfg: Config, ctx: DistContext, out: RunOutputs, cleanup: contextlib.ExitStack) -> None:
    """Rank 0 locks ``training.output_dir`` until ``cleanup`` closes (the end of the run)."""
    if ctx.is_main:
        cleanup.enter_context(exclusive_output_folder(Path(cfg.training.output_dir), "training.output_dir",
                                                      log=out.log))


def _check_resume_first(cfg: Config, ctx: DistContext, resume_from: Path) -> None:
    """Refuse an incompatible resume before the data is prepared, so splits.json, config.yaml and history stay as they were.

    The split is planned (not written) from the file listing, as prepare will write it; with
    problems in the file layout there is no split to compare, and prepare reports them.
    """
    if not ctx.is_main:
        return
    listings = discover_all(cfg.dataset)
    if any(listing_problems(listing, cfg.dataset) for listing in listings):
        return
    splits = planned_splits(listings[0], listings[1] if len(listings) > 1 else None, cfg, log=lambda _m: None)
    state = load_checkpoint(resume_from, mmap=True)
    check_resume(state, resume_from, cfg, splits, Palette.from_config(cfg.dataset).names,
                 warn=lambda _m: None, log=lambda _m: None)


def _resume_path(cfg: Config, out: RunOutputs) -> Path | None:
    """The checkpoint to resume from, if any; refuses to overwrite an earlier run's checkpoints."""
    setting = cfg.training.resume_from_checkpoint
    if setting is None:
        check_fresh_output(cfg)
        return None
    if setting == "auto":
        return out.latest_checkpoint()
    return Path(setting)
