"""A run's stateful parts in and out of checkpoints, and where a resumed run continues.

The parts are the model, optimizer, GradScaler, the schedule position, the train position,
every rank's RNG streams, the epoch's metric totals and the weights' EMA. With EMA on, a
checkpoint's ``model`` (and ``ema``, the same tensors, stored once) holds the averaged
weights, the ones validation scored, so predict / evaluate / export use them unchanged;
``model_raw`` holds the live weights that training resumes from. The file format (keys, rotation,
best mirror, validated loading) is :mod:`.checkpoint`'s; this module decides what goes in.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config import Config, config_to_dict
from ..data.palette import Palette
from ..data.splits import Splits
from ..errors import CheckpointError, DistSegError
from ..checkpoint_file import capture_rng_state, load_checkpoint, load_model_state, restore_rng_state
from ..runtime.distributed import DistContext
from .ema import ModelEma
from .metrics import TrainMetrics
from .outputs import RunOutputs
from .resume_check import check_resume


@dataclass
class TrainPosition:
    """Where training stands; saved as the checkpoint's ``train_state`` (with the epoch's metric totals)."""

    epoch: int = 0  # completed epochs
    batch_in_epoch: int = 0  # batches of the current epoch already trained (non-zero after preemption)
    global_step: int = 0  # optimizer steps
    best_miou: float = -1.0
    best_epoch: int = -1


@dataclass(frozen=True)
class EpochPlan:
    """How an epoch divides into optimizer steps on this run's ranks."""

    steps_per_epoch: int
    grad_accum_steps: int
    epochs: int

    @property
    def batches_per_epoch(self) -> int:
        # Micro-batches after the last full accumulation group are skipped, so no gradient leaks into the next epoch.
        return self.steps_per_epoch * self.grad_accum_steps

    @property
    def total_steps(self) -> int:
        # The schedule spans all epochs; max_steps only stops early (so a stopped run resumes exactly).
        return self.epochs * self.steps_per_epoch


def schedule_position(entry: dict[str, Any]) -> int:
    """Optimizer steps taken, from a checkpoint's ``scheduler`` entry (``{"step": n}``, or LambdaLR's ``last_epoch``)."""
    return int(entry["step"] if "step" in entry else entry["last_epoch"])


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

    def save(self, pos: TrainPosition, mid_epoch: bool, is_best: bool = False) -> None:
        """Write a checkpoint at ``pos`` (rank 0 writes; all ranks contribute RNG states)."""
        rng = self.ctx.gather_objects({"process": capture_rng_state(), "augment": self.aug_generator.get_state()})
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": {"step": pos.global_step},
            "scaler": self.scaler.state_dict(),
            "train_state": {**dataclasses.asdict(pos), **self.metrics.state_dict()},
            "epoch": pos.epoch,
            "global_step": pos.global_step,
            "best_metric": pos.best_miou,
            "rng": rng,
            "config": config_to_dict(self.cfg),
            "class_names": self.palette.names,
            "palette": [list(c) for c in self.palette.colors.tolist()],
            "world_size": self.ctx.world_size,
        }
        if self.ema is not None:
            averaged = self.ema.module.state_dict()
            state.update(model=averaged, ema=averaged, model_raw=state["model"], ema_updates=self.ema.updates)
        if self.splits is not None:  # a resume checks that none of these became validation data
            state["train_sequences"] = [seq.name for seq in self.splits.train]
        path, failure = None, None
        try:
            path = self.out.save_checkpoint(state, pos.epoch, pos.batch_in_epoch if mid_epoch else None, is_best)
        except DistSegError as exc:  # a full disk: every rank stops here, not at its next collective
            failure = exc
        self.ctx.raise_if_any_failed(failure)
        if path is not None:
            self.out.log(f"checkpoint: {path}" + (" (new best)" if is_best else ""))

    def restore(self, path: Path) -> TrainPosition:
        """Load every part from ``path``; returns the position to continue from, in this run's batches."""
        state = load_checkpoint(path)
        missing = [key for key in ("train_state", "scheduler", "rng") if key not in state]
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
        saved = state["train_state"]
        pos = TrainPosition(**{f.name: saved[f.name] for f in dataclasses.fields(TrainPosition)})
        if schedule_position(state["scheduler"]) != pos.global_step:
            raise CheckpointError(f"checkpoint {path}: its schedule is at step {schedule_position(state['scheduler'])} "
                                  f"but its train state at step {pos.global_step}; it is damaged: use another one")
        self.metrics.load_state_dict(saved)
        rng = state["rng"]
        if len(rng) == self.ctx.world_size:
            restore_rng_state(rng[self.ctx.rank]["process"])
            self.aug_generator.set_state(rng[self.ctx.rank]["augment"])
        else:
            self.out.warn(f"checkpoint was written by {len(rng)} rank(s), this run has {self.ctx.world_size}: "
                          "random streams restart from the seed")
        self._carry_position_over(pos, state["config"]["training"], len(rng))
        self.out.truncate_history(pos.epoch)
        where = (f"epoch {pos.epoch + 1}, batch {pos.batch_in_epoch}" if pos.batch_in_epoch
                 else f"the start of epoch {pos.epoch + 1}")
        self.out.log(f"resumed from {path}: continuing at {where} (global step {pos.global_step})")
        return pos

    def _restore_ema(self, state: dict[str, Any], path: Path) -> None:
        if self.ema is None:
            return
        if "model_raw" in state:
            self.ema.load_state_dict({"module": state["ema"], "updates": state["ema_updates"]})
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
        for group, settings in zip(self.optimizer.param_groups, configured):
            group.update(settings)

    def _carry_position_over(self, pos: TrainPosition, saved: dict[str, Any], saved_world: int) -> None:
        """Re-express the position in this run's batches and steps if the global batch changed.

        An elastic restart can change the number of ranks (or a user the batch size). Whatever
        the world size, the ranks' k-th batches together are the k-th run of one permutation of
        the epoch (seeded by the epoch), so a position inside an epoch is a count of samples. It is
        rounded down to a whole optimizer step: at most one global batch is trained again, none is
        skipped. The step count, and with it the LR schedule, follows, so the schedule still ends
        with the last epoch.
        """
        tr, plan = self.cfg.training, self.plan
        saved_batch = saved["batch_size"] * saved_world
        batch = tr.batch_size * self.ctx.world_size
        if (saved_batch, saved["grad_accum_steps"]) == (batch, tr.grad_accum_steps):
            return
        steps_in_epoch = pos.batch_in_epoch * saved_batch // (batch * tr.grad_accum_steps)
        pos.batch_in_epoch = min(steps_in_epoch * tr.grad_accum_steps, plan.batches_per_epoch)
        pos.global_step = pos.epoch * plan.steps_per_epoch + pos.batch_in_epoch // tr.grad_accum_steps
        self.out.warn(f"checkpoint was trained with {saved_batch} samples per micro-batch over all ranks and "
                      f"{saved['grad_accum_steps']} accumulation step(s), this run with {batch} and "
                      f"{tr.grad_accum_steps}: its position is carried over as a count of samples")
