"""The training loop: epochs of train steps, then validation, visualisations, history and checkpoints.

:func:`~dist_seg.train.run.run_training` wires a :class:`Trainer` up; the loop itself only
iterates. Each micro-batch goes through :class:`~dist_seg.train.step.TrainStep`; the host
reads the device (loss, non-finite flag) only at log windows.
"""

from __future__ import annotations

import contextlib
import enum
import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import Dataset

from ..checkpoint_file import unwrap_model
from ..config import Config
from ..data.loader import Loader, set_epoch
from ..data.palette import Palette
from ..eval.visualize import spread_indices
from ..runtime.device import Runtime
from ..runtime.distributed import DistContext
from ..telemetry.history import EpochRecord
from ..telemetry.progress import Progress
from ..telemetry.samples import SampleLog
from .augment import BatchPreparer
from .checkpointer import Checkpointer, EpochPlan, TrainPosition
from .ema import ModelEma, ema_weights
from .losses import SegmentationLoss
from .metrics import EpochTotals, TrainMetrics
from .outputs import RunOutputs
from .precise_bn import prepare_batch_norm
from .preemption import PreemptionWatch, Stoppable, stop_message
from .schedule import lr_factor
from .step import TrainStep
from .validation import EvalResult, evaluate, visualization_panels


class StopReason(enum.StrEnum):
    """Why training stopped (the values are the strings the summary always had)."""

    COMPLETED = "completed"
    MAX_STEPS = "max_steps"
    PREEMPTED = "preempted"
    INTERRUPTED = "interrupted"  # Ctrl-C: saved like a preemption, but the command did not finish


@dataclass
class RunSummary:
    """What ``run_training`` returns: where it stopped and why."""

    status: StopReason
    epochs_completed: int
    global_step: int
    best_miou: float | None
    final: EvalResult | None
    output_dir: Path


@dataclass
class Trainer:
    """One run's parts, trained by :meth:`fit`."""

    cfg: Config
    ctx: DistContext
    out: RunOutputs
    runtime: Runtime  # training and validation
    inference_runtime: Runtime  # visualisations (and the final evaluation): the predict / evaluate precision
    step: TrainStep
    eval_model: torch.nn.Module  # bypasses DDP: evaluation needs no gradient sync and must not broadcast buffers
    prep: BatchPreparer
    aug_generator: torch.Generator  # its own stream, so augmentation survives checkpoints exactly
    train_loader: Loader
    val_loader: Loader | None
    val_data: Dataset | None
    palette: Palette
    plan: EpochPlan
    metrics: TrainMetrics
    checkpointer: Checkpointer
    pos: TrainPosition = field(default_factory=TrainPosition)
    last_eval: EvalResult | None = None
    # Recipe parts: validation loss stays plain CE whatever the training loss; the EMA (if on)
    # is what validation scores; the training frames feed precise BN and the BN gap check.
    val_criterion: SegmentationLoss | None = None
    ema: ModelEma | None = None
    train_data: Dataset | None = None
    sample_log: SampleLog | None = None  # telemetry.sample_log: which frames each micro-batch trained

    def resume(self, path: Path) -> None:
        """Continue from the checkpoint at ``path``."""
        self.pos = self.checkpointer.restore(path)

    def fit(self, preemption: PreemptionWatch, progress: Progress) -> RunSummary:
        """Train until ``training.epochs`` (or ``max_steps``), validating and checkpointing on the way."""
        while self.pos.epoch < self.plan.epochs:
            stop = self.train_epoch(preemption, progress)
            if stop is StopReason.PREEMPTED:
                if self.pos.batch_in_epoch:
                    if preemption.interrupted:
                        self.out.log("Ctrl-C: saving a checkpoint before stopping (Ctrl-C again stops at once, "
                                     "unsaved)")
                    self.checkpointer.save(self.pos, mid_epoch=True)
                self.out.log(stop_message(preemption, self.pos.epoch + 1, self.pos.batch_in_epoch))
                stop = StopReason.INTERRUPTED if preemption.interrupted else stop
            if stop is not None:
                return self._summary(stop)
        return self._summary(StopReason.COMPLETED)

    def _summary(self, status: StopReason) -> RunSummary:
        best = self.pos.best_miou if self.pos.best_epoch >= 0 else None
        return RunSummary(status, self.pos.epoch, self.pos.global_step, best, self.last_eval, self.out.dir)

    def train_epoch(self, preemption: PreemptionWatch, progress: Progress) -> StopReason | None:
        """One pass over the training shard; returns why training must stop, or None to go on."""
        tr, pos, plan = self.cfg.training, self.pos, self.plan
        # When resuming mid-epoch, the sampler's order is a function of the epoch, so starting
        # after the samples already trained lands exactly where the stopped run left off.
        set_epoch(self.train_loader, pos.epoch, start_sample=pos.samples_in_epoch)
        self.step.model.train()
        remaining = plan.batches_per_epoch - pos.batch_in_epoch
        progress.start_epoch(pos.epoch + 1, plan.epochs, plan.batches_per_epoch, start_batch=pos.batch_in_epoch)
        stop = None
        self.metrics.start_epoch()
        # The ranks vote on a preemption request at optimizer-step boundaries only.
        batches = Stoppable(self.metrics.timed(itertools.islice(iter(self.train_loader), remaining)), self.ctx,
                            preemption, votes_after=lambda: pos.batch_in_epoch % tr.grad_accum_steps == 0)
        for images, masks, paths in batches:
            x, y = self.prep.train_batch(images, masks, tr.augment, self.aug_generator)
            last_micro = (pos.batch_in_epoch + 1) % tr.grad_accum_steps == 0
            loss = self.step(x, y, step=pos.global_step + 1, accum=tr.grad_accum_steps, last_micro=last_micro,
                             lr_factor=lr_factor(pos.global_step, plan.total_steps, tr))
            self.metrics.add(loss)
            pos.batch_in_epoch += 1
            pos.samples_in_epoch += tr.batch_size * self.ctx.world_size
            if self.sample_log is not None:
                self.sample_log.write(pos.epoch + 1, pos.global_step + 1, paths)
            if not last_micro:
                continue
            pos.global_step += 1
            at_log_step = pos.global_step % tr.log_interval == 0
            if tr.max_steps is not None and pos.global_step >= tr.max_steps:
                stop = StopReason.MAX_STEPS
                break
            if at_log_step:
                self._log_window(progress)
            if pos.batch_in_epoch < plan.batches_per_epoch and self.checkpointer.interval_due(pos, at_log_step):
                if self.metrics.window_batches:
                    self._log_window(progress)  # the checkpoint holds the epoch's totals up to here
                self.checkpointer.save(pos, mid_epoch=True)
        stop = StopReason.PREEMPTED if batches.stopped else stop
        if self.metrics.window_batches:
            self._log_window(progress)  # into the epoch's totals, which a stop's checkpoint holds too
        if stop is StopReason.PREEMPTED and pos.batch_in_epoch < plan.batches_per_epoch:
            return stop  # the caller saves a mid-epoch checkpoint, with the epoch's totals so far
        # A stop on the epoch's last step finishes the epoch first (validation, epoch checkpoint).
        progress.end_epoch()
        complete = pos.batch_in_epoch >= plan.batches_per_epoch
        if complete:
            pos.epoch += 1
            pos.batch_in_epoch = pos.samples_in_epoch = 0
        if self._end_epoch(self.metrics.take_epoch() if complete else self.metrics.epoch, partial=not complete,
                           preemption=preemption, progress=progress):
            return StopReason.PREEMPTED
        return stop

    def _scheduled_lr(self) -> float:
        """The learning rate the schedule gives after the steps taken so far (what the next step uses)."""
        tr = self.cfg.training
        return tr.learning_rate * lr_factor(self.pos.global_step, self.plan.total_steps, tr)

    def _log_window(self, progress: Progress) -> None:
        """Stop on a non-finite loss, else log the window's loss, LR, throughput and data wait."""
        self.step.raise_if_nonfinite(self.ctx, f"epoch {self.pos.epoch + 1}")
        window = self.metrics.close_window()
        lr, step = self._scheduled_lr(), self.pos.global_step
        self.out.scalars({"train/loss": window.loss, "train/lr": lr, "train/throughput_img_s": window.images_per_s,
                          "train/data_wait_frac": window.data_wait_frac}, step)
        memory_mb = torch.cuda.memory_allocated(self.ctx.device) / 2**20 if self.ctx.device.type == "cuda" else None
        progress.update(window.batches, loss=window.loss, lr=lr, images_per_s=window.images_per_s,
                        memory_mb=memory_mb, step=step)

    def _end_epoch(self, totals: EpochTotals, partial: bool, preemption: PreemptionWatch | None = None,
                   progress: Progress | None = None) -> bool:
        """Validate, visualise, record and checkpoint; ``partial`` when ``max_steps`` ended the epoch early.

        Returns True when a preemption signal stopped the validation: the epoch is then
        recorded and checkpointed without validation metrics, and the run must stop.
        """
        tr, pos, ctx = self.cfg.training, self.pos, self.ctx
        epoch = pos.epoch + 1 if partial else pos.epoch
        result = None
        stopped = False
        if self.val_loader is not None and (epoch % tr.val_interval == 0 or epoch == tr.epochs or partial):
            result = self.validate(preemption, progress)
            stopped = result is None
        is_best = result is not None and not math.isnan(result.mean_iou) and result.mean_iou > pos.best_miou
        if is_best:
            pos.best_miou, pos.best_epoch = result.mean_iou, epoch
        if not stopped and self.val_loader is not None and (epoch % tr.visualization_interval == 0
                                                            or epoch == tr.epochs):
            with self.validated_weights():
                self.visualize(epoch, progress)
        global_batch = self.metrics.global_batch
        # After a mid-epoch resume the throughput is this process's: the killed one ran on other terms.
        resumed = self.metrics.take_resumed() if not partial else self.metrics.resumed
        record = EpochRecord(
            epoch=epoch, global_step=pos.global_step, train_loss=totals.train_loss(ctx.world_size),
            lr=self._scheduled_lr(), train_images_per_s=totals.images_per_s(global_batch, since=resumed),
            data_wait_frac=totals.epoch_wait_frac, epoch_time_s=totals.epoch_elapsed_s, world_size=ctx.world_size,
            global_batch_size=global_batch * tr.grad_accum_steps,
            val_loss=result.loss if result else None, val_mIoU=result.mean_iou if result else None,
            val_pixel_acc=result.pixel_acc if result else None, val_iou=result.iou if result else None)
        self.out.record_epoch(record)
        summary = f"epoch {epoch}/{tr.epochs} | loss {record.train_loss:.4f} | {record.train_images_per_s:.1f} img/s"
        if resumed is not None:
            summary += (f" (this process only: batches {resumed.epoch_batches + 1}-{totals.epoch_batches} of the "
                        "epoch; it resumed mid-epoch)")
        if result is not None:
            summary += f" | val loss {result.loss:.4f} | mIoU {result.mean_iou:.4f} | acc {result.pixel_acc:.4f}"
        if stopped:
            summary += " | validation stopped by a preemption signal"
        self.out.log(summary)
        self.checkpointer.save(pos, mid_epoch=partial, is_best=is_best)
        return stopped

    def validate(self, preemption: PreemptionWatch | None = None, progress: Progress | None = None) -> EvalResult | None:
        """Evaluate on the validation split (all ranks) and log the metrics.

        With ``preemption``, the ranks vote between batches (as between training steps) and
        all stop together when one was signalled: None is returned, within a batch or two.
        """
        assert self.val_loader is not None
        tr, phase = self.cfg.training, progress if progress is not None else Progress("none")
        # Shards differ by at most one batch; votes are collectives, so only batches every rank has vote.
        voting_batches = -(-(len(self.val_loader.dataset) // self.ctx.world_size) // tr.val_batch_size)
        served = itertools.count(1)
        batches = Stoppable(self.val_loader, self.ctx, preemption, votes_after=lambda: next(served) <= voting_batches)
        with self.validated_weights() as model:
            if self.train_data is not None:
                prepare_batch_norm(model, self.train_data, self.prep, self.runtime, self.ctx, tr, self._epoch_label(),
                                   phase, self.out.warn)
                if tr.precise_bn_batches and self.ema is not None:
                    # The statistics belong to the averaged weights: keep them with the EMA (and its checkpoint).
                    self.ema.module.load_state_dict(model.state_dict())
            phase.start_phase(f"validate epoch {self._epoch_label()}", len(self.val_loader))
            try:
                result = evaluate(self.eval_model, batches, self.prep, self.runtime,
                                  self.val_criterion or self.step.criterion, self.ctx, self.palette.names,
                                  self.cfg.dataset.void_index, on_batch=lambda _i: phase.phase_step(),
                                  out_of_memory=(f"training.val_batch_size {tr.val_batch_size}: a validation batch",
                                                 "lower training.val_batch_size"))
            finally:
                phase.end_phase()
        if batches.stopped:
            return None
        values = {"val/loss": result.loss, "val/mIoU": result.mean_iou, "val/pixel_acc": result.pixel_acc}
        if not math.isnan(result.flicker):
            values["val/flicker"] = result.flicker
        values.update({f"val/IoU/{name}": iou for name, iou in result.iou.items() if not math.isnan(iou)})
        self.out.scalars(values, self.pos.global_step)
        self.last_eval = result
        return result

    def validated_weights(self) -> contextlib.AbstractContextManager[torch.nn.Module]:
        """The unwrapped model holding the weights that validation scores (the EMA's while it is on)."""
        model = unwrap_model(self.eval_model)
        return ema_weights(model, self.ema) if self.ema is not None else contextlib.nullcontext(model)

    def _epoch_label(self) -> str:
        """``3/80``: the epoch being finished (the position counts it once it is complete)."""
        epoch = self.pos.epoch if self.pos.batch_in_epoch == 0 else self.pos.epoch + 1
        return f"{max(epoch, 1)}/{self.plan.epochs}"

    def visualize(self, epoch: int, progress: Progress | None = None) -> None:
        """Titled panels of a fixed, spread-out choice of validation frames (rank 0 only; no collectives)."""
        if not self.out.active or self.val_data is None:
            return
        chosen = spread_indices(len(self.val_data), self.cfg.training.num_visualizations)
        if not chosen:
            return
        phase = progress if progress is not None else Progress("none")
        phase.start_phase(f"visualisations epoch {epoch}/{self.plan.epochs}", len(chosen), unit="frame")
        panels = visualization_panels(unwrap_model(self.eval_model), chosen, self.val_data, self.prep,
                                      self.inference_runtime, self.palette, self.cfg.dataset.void_index,
                                      on_frame=phase.phase_step)
        self.out.save_visualizations(epoch, panels, self.pos.global_step)
        phase.end_phase()
