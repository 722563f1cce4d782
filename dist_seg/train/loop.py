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
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..config import Config
from ..data.loader import Loader, set_epoch
from ..data.palette import Palette
from ..telemetry.history import EpochRecord
from ..telemetry.progress import Progress
from .augment import BatchPreparer
from .precise_bn import bn_batch_count, check_bn_gap, refresh_bn_stats
from ..checkpoint_file import unwrap_model
from .checkpointer import Checkpointer, EpochPlan, TrainPosition
from ..runtime.distributed import DistContext, StopVote
from .ema import ModelEma, ema_weights
from .validation import EvalResult, evaluate
from ..eval.inference import forward_logits, upsample_argmax
from .losses import SegmentationLoss
from ..runtime.memory import memory_needed_by
from .metrics import EpochTotals, TrainMetrics
from .outputs import RunOutputs
from .preemption import PreemptionWatch
from ..runtime.device import Runtime
from .schedule import lr_factor
from .step import TrainStep
from ..eval.visualize import comparison_panel, spread_indices


class StopReason(enum.StrEnum):
    """Why training stopped (the values are the strings the summary always had)."""

    COMPLETED = "completed"
    MAX_STEPS = "max_steps"
    PREEMPTED = "preempted"
    INTERRUPTED = "interrupted"  # Ctrl-C: saved like a preemption, but the command did not finish


class _ValidationStopped(Exception):
    """Raised between validation batches when the ranks agreed to stop on a preemption signal."""


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
    _last_save: float = field(default_factory=time.monotonic)  # for training.checkpoint_interval_minutes

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
                # Only rank 0 logs, and it may be stopping because another rank (node) was signalled.
                cause = preemption.received or "a preemption signal to another rank"
                self.out.log(f"stopped on {cause} at epoch {self.pos.epoch + 1}, batch "
                             f"{self.pos.batch_in_epoch}: resume with training.resume_from_checkpoint: auto")
                if preemption.interrupted:
                    stop = StopReason.INTERRUPTED
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
        # after the batches already trained lands exactly where the stopped run left off.
        set_epoch(self.train_loader, pos.epoch, start_batch=pos.batch_in_epoch)
        self.step.model.train()
        remaining = plan.batches_per_epoch - pos.batch_in_epoch
        progress.start_epoch(pos.epoch + 1, plan.epochs, plan.batches_per_epoch, start_batch=pos.batch_in_epoch)
        vote = StopVote(self.ctx)
        stop = None
        self.metrics.start_epoch()
        batches = self.metrics.timed(itertools.islice(iter(self.train_loader), remaining))
        with memory_needed_by(f"training.batch_size {tr.batch_size}: a training step of {tr.batch_size} samples "
                              f"of {tr.image_size[0]}x{tr.image_size[1]}", self.ctx.device,
                              "lower training.batch_size (raise training.grad_accum_steps to keep the global "
                              "batch) or training.image_size"):
            for images, masks, _paths in batches:
                x, y = self.prep.train_batch(images, masks, tr.augment, self.aug_generator)
                last_micro = (pos.batch_in_epoch + 1) % tr.grad_accum_steps == 0
                loss = self.step(x, y, step=pos.global_step + 1, accum=tr.grad_accum_steps, last_micro=last_micro,
                                 lr_factor=lr_factor(pos.global_step, plan.total_steps, tr))
                self.metrics.add(loss)
                pos.batch_in_epoch += 1
                if not last_micro:
                    continue
                pos.global_step += 1
                if vote.poll(preemption.requested):
                    stop = StopReason.PREEMPTED
                elif tr.max_steps is not None and pos.global_step >= tr.max_steps:
                    stop = StopReason.MAX_STEPS
                at_log_step = pos.global_step % tr.log_interval == 0
                if stop is not None or at_log_step:
                    self._log_window(progress)
                if stop is not None:
                    break
                if pos.batch_in_epoch < plan.batches_per_epoch and self._interval_checkpoint_due(at_log_step):
                    if self.metrics.window_batches:
                        self._log_window(progress)  # the checkpoint holds the epoch's totals up to here
                    self.checkpointer.save(pos, mid_epoch=True)
                    self._last_save = time.monotonic()
        vote.drain()

        if stop is StopReason.PREEMPTED and pos.batch_in_epoch < plan.batches_per_epoch:
            return stop  # the caller saves a mid-epoch checkpoint, with the epoch's totals so far
        # A stop on the epoch's last step finishes the epoch first (validation, epoch checkpoint).
        if self.metrics.window_batches:
            self._log_window(progress)
        progress.end_epoch()
        complete = pos.batch_in_epoch >= plan.batches_per_epoch
        if complete:
            pos.epoch += 1
            pos.batch_in_epoch = 0
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
        self._last_save = time.monotonic()
        return stopped

    def _interval_checkpoint_due(self, at_log_step: bool) -> bool:
        """Whether ``training.checkpoint_interval_steps`` / ``_minutes`` asks for a checkpoint after this step.

        Minutes are rank 0's clock, agreed by every rank with a collective at log steps only (where
        the loop reads the device anyway), so all ranks save the same step.
        """
        tr = self.cfg.training
        if tr.checkpoint_interval_steps and self.pos.global_step % tr.checkpoint_interval_steps == 0:
            return True
        if tr.checkpoint_interval_minutes is None or not at_log_step:
            return False
        late = self.ctx.is_main and time.monotonic() - self._last_save >= tr.checkpoint_interval_minutes * 60
        return bool(self.ctx.all_reduce_max(torch.tensor([float(late)], device=self.ctx.device)).item())

    def validate(self, preemption: PreemptionWatch | None = None, progress: Progress | None = None) -> EvalResult | None:
        """Evaluate on the validation split (all ranks) and log the metrics.

        With ``preemption``, the ranks vote between batches (as between training steps) and
        all stop together when one was signalled: None is returned, within a batch or two.
        """
        assert self.val_loader is not None
        vote = StopVote(self.ctx)
        # Shards differ by at most one batch; votes are collectives, so only batches every rank has vote.
        tr = self.cfg.training
        voting_batches = -(-(len(self.val_loader.dataset) // self.ctx.world_size) // tr.val_batch_size)

        def between_batches(i: int) -> None:
            if progress is not None:
                progress.phase_step()
            if preemption is not None and i < voting_batches and vote.poll(preemption.requested):
                raise _ValidationStopped

        try:
            with self.validated_weights() as model:
                self._prepare_batch_norm(model, progress)
                if progress is not None:
                    progress.start_phase(f"validate epoch {self._epoch_label()}", len(self.val_loader))
                with memory_needed_by(f"training.val_batch_size {tr.val_batch_size}: a validation batch",
                                      self.ctx.device, "lower training.val_batch_size"):
                    result = evaluate(self.eval_model, self.val_loader, self.prep, self.runtime,
                                      self.val_criterion or self.step.criterion, self.ctx, self.palette.names,
                                      self.cfg.dataset.void_index, on_batch=between_batches)
        except _ValidationStopped:
            return None
        finally:
            vote.drain()
            if progress is not None:
                progress.end_phase()
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

    def _prepare_batch_norm(self, model: torch.nn.Module, progress: Progress | None = None) -> None:
        """Precise BN (``training.precise_bn_batches``), or else the eval/train gap check (``training.bn_check``)."""
        tr = self.cfg.training
        if self.train_data is None:
            return
        phase = progress if progress is not None else Progress("none")
        if tr.precise_bn_batches:
            batches = bn_batch_count(len(self.train_data), tr.batch_size, tr.precise_bn_batches, self.ctx.world_size)
            phase.start_phase(f"precise BN epoch {self._epoch_label()} (re-estimating BatchNorm statistics)", batches)
            try:
                refresh_bn_stats(model, self.train_data, self.prep, self.runtime, self.ctx, tr.batch_size,
                                 tr.precise_bn_batches, on_batch=phase.phase_step)
            finally:
                phase.end_phase()
            if self.ema is not None:
                # The statistics belong to the averaged weights: keep them with the EMA (and its checkpoint).
                self.ema.module.load_state_dict(model.state_dict())
        elif tr.bn_check:
            phase.start_phase(f"BN check epoch {self._epoch_label()} (eval vs batch statistics)", 1)
            try:
                check_bn_gap(model, self.train_data, self.prep, self.runtime, self.ctx, tr.batch_size, self.out.warn)
                phase.phase_step()
            finally:
                phase.end_phase()

    def visualize(self, epoch: int, progress: Progress | None = None) -> None:
        """Titled panels of a fixed, spread-out choice of validation frames (rank 0 only; no collectives)."""
        if not self.out.active or self.val_data is None:
            return
        chosen = spread_indices(len(self.val_data), self.cfg.training.num_visualizations)
        if not chosen:
            return
        phase = progress if progress is not None else Progress("none")
        phase.start_phase(f"visualisations epoch {epoch}/{self.plan.epochs}", len(chosen), unit="frame")
        panels = []
        model = unwrap_model(self.eval_model)
        was_training = model.training
        model.eval()
        with torch.no_grad():
            for i in chosen:
                image, mask, path = self.val_data[i]
                x, y = self.prep.eval_batch(image.unsqueeze(0), mask.unsqueeze(0))
                pred = upsample_argmax(forward_logits(model, x, self.inference_runtime), y.shape[-2:])[0]
                stem = Path(path).stem
                panels.append((stem, comparison_panel(image.permute(1, 2, 0).numpy(), mask.numpy(),
                                                      pred.cpu().numpy().astype(np.uint8), self.palette,
                                                      name=stem, void_index=self.cfg.dataset.void_index)))
                phase.phase_step()
        model.train(was_training)
        self.out.save_visualizations(epoch, panels, self.pos.global_step)
        phase.end_phase()
