"""A run's stateful parts in and out of checkpoints, and where a resumed run continues.

A checkpoint is a collection of named parts, each with ``state_dict`` / ``load_state_dict``:
the optimizer, the GradScaler, the epoch's metric totals, the weights' EMA and the position
(:class:`TrainPosition`), plus every rank's RNG streams. The position has one source: the
checkpoint's ``epoch`` / ``global_step`` / ``best_metric`` keys (the LR schedule is a function of
the step, so it stores nothing). With EMA on, a checkpoint's ``model`` holds the averaged weights,
the ones validation scored, so predict / evaluate / export use them unchanged; ``model_raw`` holds
the live weights that training resumes from. The file format (keys, rotation, best mirror,
validated loading, the reader of version 1) is :mod:`dist_seg.checkpoint_file`'s.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..checkpoint_file import capture_rng_state, load_checkpoint, load_model_state, restore_rng_state
from ..config import Config, config_to_dict
from ..data.palette import Palette
from ..data.position import resume_batch, stream_seed
from ..data.splits import Splits
from ..errors import CheckpointError, DistSegError
from ..runtime.distributed import DistContext
from .ema import ModelEma
from .metrics import TrainMetrics
from .outputs import RunOutputs
from .resume_check import check_resume


@dataclass
class TrainPosition:
    """Where training stands: the checkpoint's ``epoch``, ``global_step``, ``best_metric`` and ``position`` part."""

    epoch: int = 0  # completed epochs
    batch_in_epoch: int = 0  # batches of the current epoch already trained (non-zero after preemption)
    samples_in_epoch: int = 0  # samples of the epoch's order all ranks together trained (any world size)
    global_step: int = 0  # optimizer steps
    best_miou: float = -1.0
    best_epoch: int = -1

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint entries of the position: the header's three keys and the ``position`` part."""
        return {"epoch": self.epoch, "global_step": self.global_step, "best_metric": self.best_miou,
                "position": {"batch_in_epoch": self.batch_in_epoch, "samples_in_epoch": self.samples_in_epoch,
                             "best_epoch": self.best_epoch}}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> TrainPosition:
        """The position a (version 2) checkpoint records."""
        part = state["position"]
        return cls(epoch=int(state["epoch"]), batch_in_epoch=int(part["batch_in_epoch"]),
                   samples_in_epoch=int(part.get("samples_in_epoch", 0)), global_step=int(state["global_step"]),
                   best_miou=float(state["best_metric"]), best_epoch=int(part["best_epoch"]))


@dataclass(frozen=True)
class EpochPlan:
    """How an epoch divides into optimizer steps on this run's ranks."""

    steps_per_epoch: int
    grad_accum_steps: int
    epochs: int
    frames: int  # training frames: the length of the epoch's order

    @property
    def batches_per_epoch(self) -> int:
        # Micro-batches after the last full accumulation group are skipped, so no gradient leaks into the next epoch.
        return self.steps_per_epoch * self.grad_accum_steps

    @property
    def total_steps(self) -> int:
        # The schedule spans all epochs; max_steps only stops early (so a stopped run resumes exactly).
        return self.epochs * self.steps_per_epoch


class Checkpointer:
    """Saves and restores the stateful parts of one run (every rank calls both: RNG states are gathered)."""

    def __init__(self, cfg: Config, ctx: DistContext, out: RunOutputs, palette: Palette, plan: EpochPlan, *,
                 model: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                 metrics: TrainMetrics, aug_generator: torch.Generator, ema: ModelEma | None = None,
                 splits: Splits | None = None) -> None:
        self.cfg, self.ctx, self.out, self.palette, self.plan = cfg, ctx, out, palette, plan
        self.splits = splits
        self.model = model  # unwrapped: checkpoints hold no DDP / compile prefixes
        self.optimizer = optimizer
        self.scaler = scaler
        self.metrics = metrics
        self.aug_generator = aug_generator
        self.ema = ema
        self.last_save = time.monotonic()  # for training.checkpoint_interval_minutes

    def interval_due(self, pos: TrainPosition, at_log_step: bool) -> bool:
        """Whether ``training.checkpoint_interval_steps`` / ``_minutes`` asks for a checkpoint after this step.

        Minutes are rank 0's clock, agreed by every rank with a collective at log steps only (where
        the loop reads the device anyway), so all ranks save the same step.
        """
        tr = self.cfg.training
        if tr.checkpoint_interval_steps and pos.global_step % tr.checkpoint_interval_steps == 0:
            return True
        if tr.checkpoint_interval_minutes is None or not at_log_step:
            return False
        late = self.ctx.is_main and time.monotonic() - self.last_save >= tr.checkpoint_interval_minutes * 60
        return bool(self.ctx.all_reduce_max(torch.tensor([float(late)], device=self.ctx.device)).item())

    def parts(self) -> dict[str, Any]:
        """The stateful parts besides model and position, by their checkpoint key."""
        parts: dict[str, Any] = {"optimizer": self.optimizer, "scaler": self.scaler, "metrics": self.metrics}
        if self.ema is not None:
            parts["ema"] = self.ema
        return parts

    def save(self, pos: TrainPosition, mid_epoch: bool, is_best: bool = False) -> None:
        """Write a checkpoint at ``pos`` (rank 0 writes; all ranks contribute RNG states)."""
        rng = self.ctx.gather_objects({"process": capture_rng_state(), "augment": self.aug_generator.get_state()})
        state = {
            "model": self.model.state_dict(),
            "config": config_to_dict(self.cfg),
            "class_names": self.palette.names,
            "palette": [list(c) for c in self.palette.colors.tolist()],
            "world_size": self.ctx.world_size,
            **pos.state_dict(),
            **{name: part.state_dict() for name, part in self.parts().items()},
            "rng": rng,
        }
        if self.ema is not None:  # what inference reads is what validation scored; training resumes the live weights
            state.update(model=state["ema"]["module"], model_raw=state["model"])
        if self.splits is not None:  # a resume checks that none of these became validation data
            state["train_sequences"] = [seq.name for seq in self.splits.train]
        path, failure = None, None
        try:
            path = self.out.save_checkpoint(state, pos.epoch, pos.batch_in_epoch if mid_epoch else None, is_best)
        except DistSegError as exc:  # a full disk: every rank stops here, not at its next collective
            failure = exc
        self.ctx.raise_if_any_failed(failure)
        self.last_save = time.monotonic()
        if path is not None:
            self.out.log(f"checkpoint: {path}" + (" (new best)" if is_best else ""))

    def restore(self, path: Path) -> TrainPosition:
        """Load every part from ``path``; returns the position to continue from, in this run's batches."""
        state = load_checkpoint(path)
        missing = [key for key in ("position", "metrics", "rng") if key not in state]
        if missing:
            raise CheckpointError(f"checkpoint {path} lacks {', '.join(missing)}, so training cannot continue from "
                                  "it; to start a new run from its weights set model.backbone_weights to it")
        fresh_optimizer = self._check_config_changes(state, path)
        load_model_state(self.model, {"model": state.get("model_raw", state["model"])}, path)
        self._restore_ema(state, path)
        if not fresh_optimizer:
            self._load_optimizer(state, path)
        if "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        self.metrics.load_state_dict(state["metrics"])
        pos = TrainPosition.from_state(state)
        rng = state["rng"]
        self._carry_position_over(pos, state["config"]["training"], len(rng),
                                  "samples_in_epoch" in state["position"])
        if len(rng) == self.ctx.world_size:
            restore_rng_state(rng[self.ctx.rank]["process"])
            self.aug_generator.set_state(rng[self.ctx.rank]["augment"])
        else:
            seed = stream_seed(self.cfg.training.seed, pos.epoch, pos.samples_in_epoch, self.ctx.rank)
            torch.manual_seed(seed)
            self.aug_generator.manual_seed(seed)
            self.out.warn(f"checkpoint was written by {len(rng)} rank(s), this run has {self.ctx.world_size}: "
                          "random streams continue from seeds of the position and the rank")
        self.out.truncate_history(pos.epoch)
        where = (f"epoch {pos.epoch + 1}, batch {pos.batch_in_epoch}" if pos.batch_in_epoch
                 else f"the start of epoch {pos.epoch + 1}")
        self.out.log(f"resumed from {path}: continuing at {where} (global step {pos.global_step})")
        return pos

    def _restore_ema(self, state: dict[str, Any], path: Path) -> None:
        if self.ema is None:
            return
        if "ema" in state:
            self.ema.load_state_dict(state["ema"])
            return
        # A checkpoint of a run without EMA: the average starts from its weights.
        self.ema.load_state_dict({"module": self.model.state_dict(), "updates": 0})
        self.out.warn(f"checkpoint {path} holds no EMA weights (training.ema was off): the EMA starts from "
                      "its weights")

    def _check_config_changes(self, state: dict[str, Any], path: Path) -> bool:
        """Say which changed settings apply; refuse those that would train something else unless forced.

        Returns True when the optimizer changed (forced), so its state must not be loaded.
        """
        return check_resume(state, path, self.cfg, self.splits, self.palette.names, warn=self.out.warn,
                            log=self.out.log).optimizer_changed

    def _load_optimizer(self, state: dict[str, Any], path: Path) -> None:
        """Optimizer state from the checkpoint, with this run's hyperparameters (the config is the truth)."""
        if "optimizer" not in state:
            raise CheckpointError(f"checkpoint {path} holds no optimizer state, so training cannot continue from "
                                  "it; to start a new run from its weights set model.backbone_weights to it")
        configured = [{k: v for k, v in group.items() if k != "params"} for group in self.optimizer.param_groups]
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except (ValueError, KeyError, TypeError, RuntimeError) as exc:
            raise CheckpointError(f"checkpoint {path}: its optimizer state does not fit this run's "
                                  f"{self.cfg.training.optimizer} optimizer ({exc}); resume with the optimizer "
                                  "and model it was trained with, or start from its weights with "
                                  "model.backbone_weights") from exc
        # load_state_dict brings back the old learning rate, weight decay, momentum...: a changed
        # config value must win (and config.yaml then tells the truth).
        for group, settings in zip(self.optimizer.param_groups, configured, strict=False):
            group.update(settings)

    def _carry_position_over(self, pos: TrainPosition, saved: dict[str, Any], saved_world: int,
                             counted_samples: bool) -> None:
        """Re-express the position in this run's batches and steps if the global batch changed.

        The position inside an epoch is a count of samples (see :mod:`dist_seg.data.position`);
        a checkpoint written before the count was saved gives it as its batches x its global
        batch. With another global batch the run continues at exactly that sample, and its
        batch and step counts (with them the LR schedule) follow, so the schedule still ends
        with the last epoch.
        """
        tr, plan = self.cfg.training, self.plan
        saved_batch = saved["batch_size"] * saved_world
        if not counted_samples:
            pos.samples_in_epoch = pos.batch_in_epoch * saved_batch
        batch = tr.batch_size * self.ctx.world_size
        if (saved_batch, saved["grad_accum_steps"]) == (batch, tr.grad_accum_steps):
            return
        pos.batch_in_epoch = resume_batch(plan.frames, pos.samples_in_epoch, tr.batch_size, self.ctx.world_size,
                                          tr.grad_accum_steps)
        pos.global_step = pos.epoch * plan.steps_per_epoch + pos.batch_in_epoch // tr.grad_accum_steps
        self.out.warn(f"checkpoint was trained with {saved_batch} samples per micro-batch over all ranks and "
                      f"{saved['grad_accum_steps']} accumulation step(s), this run with {batch} and "
                      f"{tr.grad_accum_steps}: its position is carried over as a count of samples "
                      f"({pos.samples_in_epoch} into epoch {pos.epoch + 1})")
