"""The training loop.

``run_training(cfg)`` is the whole run: process group, data, model, then epochs of
train steps with periodic validation, checkpoints and logging. One code path serves a
laptop CPU, one GPU and ``torchrun`` on many nodes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from ..config import Config, config_to_dict
from ..data.loader import build_loader, describe_loader, set_epoch
from ..data.palette import Palette
from ..data.pipeline import DataBundle, load_datasets, prepare
from ..errors import DistSegError
from ..models import build_model, check_model_config
from ..telemetry.history import EpochRecord
from ..telemetry.memlog import MemoryLog
from ..telemetry.progress import Progress
from ..telemetry.tensorboard import RunWriter, TensorBoardVramSink, rank_log_dir
from ..telemetry.vram import VramSampler
from .augment import BatchPreparer
from .checkpoint import capture_rng_state, load_checkpoint, load_model_state, restore_rng_state, unwrap_model
from .distributed import DistContext, StopVote, restart_hazard, setup_distributed, teardown_distributed
from .evaluation import EvalResult, evaluate
from .losses import SegmentationLoss, class_weights
from .outputs import RunOutputs
from .preemption import PreemptionWatch
from .runtime import Runtime, resolve_runtime
from .schedule import build_scheduler
from .visualize import comparison_panel


class NonFiniteLossError(DistSegError):
    """Training produced a NaN/inf loss; continuing would only train on garbage."""


@dataclass
class TrainState:
    """Position in training; everything here goes into checkpoints."""

    epoch: int = 0  # completed epochs
    batch_in_epoch: int = 0  # batches of the current epoch already trained (non-zero after preemption)
    global_step: int = 0  # optimizer steps
    best_miou: float = -1.0
    best_epoch: int = -1
    # Totals of the current epoch's finished log windows, carried through a mid-epoch
    # checkpoint so that a resumed epoch's history record covers the whole epoch.
    epoch_batches: int = 0
    epoch_elapsed_s: float = 0.0
    epoch_loss_total: float = 0.0
    epoch_wait_frac: float = 0.0


@dataclass
class RunSummary:
    """What ``run_training`` returns: where it stopped and why."""

    status: str  # "completed" | "max_steps" | "preempted"
    epochs_completed: int
    global_step: int
    best_miou: float | None
    final: EvalResult | None
    output_dir: Path


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Trainer:
    """Owns the model, optimizer and data of one run and trains them."""

    def __init__(self, cfg: Config, ctx: DistContext, out: RunOutputs) -> None:
        self.cfg = cfg
        self.ctx = ctx
        self.out = out
        tr = cfg.training
        self.runtime: Runtime = resolve_runtime(cfg.backend, ctx.device, log=out.log)
        if tr.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        seed_everything(tr.seed)

        self.data = self._prepare_data()
        self.palette = Palette.from_config(cfg.dataset)
        self.class_names = self.palette.names
        self.void_index = cfg.dataset.void_index
        self.train_loader = build_loader(self.data.train, tr, ctx, train=True)
        self.val_loader = (build_loader(self.data.val, tr, ctx, train=False)
                           if self.data.val is not None and len(self.data.val) else None)
        self.steps_per_epoch = len(self.train_loader) // tr.grad_accum_steps
        if self.steps_per_epoch == 0:
            raise DistSegError(
                f"training split has {len(self.data.train)} frames: too few for one optimizer step of "
                f"{ctx.world_size} rank(s) x training.batch_size {tr.batch_size} x grad_accum_steps "
                f"{tr.grad_accum_steps}; lower the batch size or add data")
        # Micro-batches left over after the last full accumulation group are skipped, so
        # gradients never leak from one epoch into the next.
        self.batches_per_epoch = self.steps_per_epoch * tr.grad_accum_steps
        # The schedule spans all epochs; max_steps only stops early (so a stopped run resumes exactly).
        self.total_steps = tr.epochs * self.steps_per_epoch

        self.model, self.eval_model = self._build_model()
        self.optimizer = self._build_optimizer()
        self.scheduler = build_scheduler(self.optimizer, self.total_steps, tr)
        self.scaler = self.runtime.grad_scaler()
        weight = class_weights(self.data.train_class_pixel_counts, tr.class_weighting, self.void_index)
        self.criterion = SegmentationLoss(weight).to(ctx.device)
        self.prep = BatchPreparer(ctx.device, self.runtime.memory_format, tuple(tr.image_size), self.void_index)
        # Augmentation draws from its own generator so its stream survives checkpoints exactly.
        self.aug_generator = torch.Generator().manual_seed(tr.seed * 1000 + ctx.rank)
        self.state = TrainState()
        self.last_eval: EvalResult | None = None
        self._log_training_setup(weight)

    # ------------------------------------------------------------------ setup

    def _prepare_data(self) -> DataBundle:
        """Decode and cache once per node (local rank 0), then every rank opens the caches."""
        if self.ctx.is_local_main:
            prepare(self.cfg, log=self.out.log if self.ctx.is_main else (lambda _m: None),
                    progress=self.ctx.is_main)
        self.ctx.wait_for_local_main()
        return load_datasets(self.cfg)

    def _build_model(self) -> tuple[torch.nn.Module, torch.nn.Module]:
        """Model on the device: SyncBN, layout, compile, then DDP (in that order).

        Resumed weights are loaded later into the unwrapped module; every rank loads the same
        checkpoint, so DDP's initial broadcast of rank 0's random weights does no harm.
        """
        cfg, ctx, rt = self.cfg, self.ctx, self.runtime
        model = build_model(cfg.model, len(self.class_names))
        if cfg.backend.sync_bn:
            if ctx.is_distributed and ctx.backend == "nccl":
                model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
                self.out.log("SyncBatchNorm: BatchNorm statistics are synchronised across ranks")
            else:
                self.out.warn("backend.sync_bn is on but needs NCCL across several GPUs "
                              f"(this run: {ctx.backend or 'single process'}); keeping per-rank BatchNorm")
        model = model.to(ctx.device, memory_format=rt.memory_format)
        compiled = torch.compile(model, mode=rt.compile_mode) if rt.compile else model
        if not ctx.is_distributed:
            return compiled, compiled
        ddp = DistributedDataParallel(compiled, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
        # Evaluation bypasses DDP: it needs no gradient sync and must not broadcast buffers.
        return ddp, compiled

    def _build_optimizer(self) -> torch.optim.Optimizer:
        tr = self.cfg.training
        params = [p for p in self.model.parameters() if p.requires_grad]
        if tr.optimizer == "sgd":
            return torch.optim.SGD(params, lr=tr.learning_rate, momentum=tr.momentum,
                                   weight_decay=tr.weight_decay)
        return torch.optim.AdamW(params, lr=tr.learning_rate, weight_decay=tr.weight_decay)

    def _log_training_setup(self, weight: torch.Tensor | None) -> None:
        tr, ctx = self.cfg.training, self.ctx
        n_val = len(self.data.val) if self.data.val is not None else 0
        self.out.log(f"data: {len(self.data.train)} train / {n_val} val frames | "
                     f"{self.steps_per_epoch} steps per epoch, {self.total_steps} in total")
        self.out.log(f"batch: {tr.batch_size} per rank x {ctx.world_size} rank(s) x {tr.grad_accum_steps} "
                     f"accumulation = global batch {tr.batch_size * ctx.world_size * tr.grad_accum_steps}")
        self.out.log(f"loader: {describe_loader(self.train_loader)}")
        if weight is not None:
            pairs = ", ".join(f"{n}={w:.2f}" for n, w in zip(self.class_names, weight.tolist()))
            self.out.log(f"class weights ({tr.class_weighting}): {pairs}")
        if self.val_loader is None:
            self.out.log("no validation split: validation and visualizations are skipped")

    # ------------------------------------------------------------------ checkpoints

    def resume(self, path: Path) -> None:
        """Restore model, optimizer, scaler, scheduler, position and RNG streams from ``path``."""
        state = load_checkpoint(path)
        load_model_state(unwrap_model(self.model), state, path)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.state = TrainState(**state["train_state"])
        rng = state["rng"]
        if len(rng) == self.ctx.world_size:
            restore_rng_state(rng[self.ctx.rank]["process"])
            self.aug_generator.set_state(rng[self.ctx.rank]["augment"])
        else:
            self.out.warn(f"checkpoint was written by {len(rng)} rank(s), this run has {self.ctx.world_size}: "
                          "random streams restart from the seed")
        self._carry_position_over(state, len(rng))
        self.out.truncate_history(self.state.epoch)
        where = f"epoch {self.state.epoch + 1}, batch {self.state.batch_in_epoch}" if self.state.batch_in_epoch \
            else f"the start of epoch {self.state.epoch + 1}"
        self.out.log(f"resumed from {path}: continuing at {where} (global step {self.state.global_step})")

    def _carry_position_over(self, state: dict[str, Any], saved_world: int) -> None:
        """Re-express the checkpoint's position in this run's batches and steps if the global batch changed.

        An elastic restart can change the number of ranks (or a user the batch size). Whatever
        the world size, the ranks' k-th batches together are the k-th run of one permutation of
        the epoch (seeded by the epoch), so a position inside an epoch is a count of samples. It is
        rounded down to a whole optimizer step: at most one global batch is trained again, none is
        skipped. The step count and the LR schedule follow, so the schedule still ends with the
        last epoch.
        """
        tr, st = self.cfg.training, self.state
        saved = state["config"]["training"]
        saved_batch = saved["batch_size"] * saved_world
        batch = tr.batch_size * self.ctx.world_size
        if (saved_batch, saved["grad_accum_steps"]) == (batch, tr.grad_accum_steps):
            return
        steps_in_epoch = st.batch_in_epoch * saved_batch // (batch * tr.grad_accum_steps)
        st.batch_in_epoch = min(steps_in_epoch * tr.grad_accum_steps, self.batches_per_epoch)
        st.global_step = st.epoch * self.steps_per_epoch + st.batch_in_epoch // tr.grad_accum_steps
        self.scheduler.last_epoch = st.global_step
        for group, base_lr, factor in zip(self.optimizer.param_groups, self.scheduler.base_lrs,
                                          self.scheduler.lr_lambdas):
            group["lr"] = base_lr * factor(st.global_step)
        self.out.warn(f"checkpoint was trained with {saved_batch} samples per micro-batch over all ranks and "
                      f"{saved['grad_accum_steps']} accumulation step(s), this run with {batch} and "
                      f"{tr.grad_accum_steps}: its position is carried over as a count of samples")

    def checkpoint_state(self) -> dict[str, Any]:
        """The checkpoint payload; gathers every rank's RNG state, so all ranks must call it."""
        rng = self.ctx.gather_objects({"process": capture_rng_state(), "augment": self.aug_generator.get_state()})
        return {
            "model": unwrap_model(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "train_state": asdict(self.state),
            "epoch": self.state.epoch,
            "global_step": self.state.global_step,
            "best_metric": self.state.best_miou,
            "rng": rng,
            "config": config_to_dict(self.cfg),
            "class_names": self.class_names,
            "palette": [list(c) for c in self.palette.colors.tolist()],
            "world_size": self.ctx.world_size,
        }

    def save(self, mid_epoch: bool, is_best: bool = False) -> None:
        state = self.checkpoint_state()
        path = self.out.save_checkpoint(state, self.state.epoch,
                                        self.state.batch_in_epoch if mid_epoch else None, is_best)
        if path is not None:
            self.out.log(f"checkpoint: {path}" + (" (new best)" if is_best else ""))

    # ------------------------------------------------------------------ training

    def fit(self, preemption: PreemptionWatch, progress: Progress) -> RunSummary:
        """Train until ``training.epochs`` (or ``max_steps``), validating and checkpointing on the way."""
        tr = self.cfg.training
        status = "completed"
        while self.state.epoch < tr.epochs:
            epoch_status = self.train_epoch(preemption, progress)
            if epoch_status == "preempted":
                if self.state.batch_in_epoch:
                    self.save(mid_epoch=True)
                # Only rank 0 logs, and it may be stopping because another rank (node) was signalled.
                cause = preemption.received or "a preemption signal to another rank"
                self.out.log(f"stopped on {cause} at epoch {self.state.epoch + 1}, batch "
                             f"{self.state.batch_in_epoch}: resume with training.resume_from_checkpoint: auto")
                return self._summary("preempted")
            if epoch_status == "max_steps":
                status = "max_steps"
                break
        return self._summary(status)

    def _summary(self, status: str) -> RunSummary:
        best = self.state.best_miou if self.state.best_epoch >= 0 else None
        return RunSummary(status, self.state.epoch, self.state.global_step, best, self.last_eval, self.out.dir)

    def train_epoch(self, preemption: PreemptionWatch, progress: Progress) -> str:
        """One pass over the training shard. Returns "done", "max_steps" or "preempted"."""
        tr, ctx, st = self.cfg.training, self.ctx, self.state
        epoch = st.epoch
        # When resuming mid-epoch, the sampler's order is a function of the epoch, so starting
        # after the batches already trained lands exactly where the stopped run left off.
        set_epoch(self.train_loader, epoch, start_batch=st.batch_in_epoch)
        self.model.train()
        batches = itertools.islice(iter(self.train_loader), self.batches_per_epoch - st.batch_in_epoch)
        accum = tr.grad_accum_steps
        global_batch = tr.batch_size * ctx.world_size
        progress.start_epoch(epoch + 1, tr.epochs, self.batches_per_epoch - st.batch_in_epoch)

        # Running sums live on the device and are read only at log steps (no per-step sync).
        device = ctx.device
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        first_bad_step = torch.full((), -1, dtype=torch.int64, device=device)
        window = _Window()
        epoch_timer = _Window.resumed(st)
        vote = StopVote(ctx)
        status = "done"

        t_wait = time.perf_counter()
        for images, masks, _paths in batches:
            window.data_wait += time.perf_counter() - t_wait
            micro = st.batch_in_epoch % accum
            x, y = self.prep.train_batch(images, masks, tr.augment, self.aug_generator)
            sync = micro == accum - 1
            with self._maybe_no_sync(sync), self.runtime.autocast():
                logits = self.model(x)["out"]
            loss = self.criterion(logits, y)
            self.scaler.scale(loss / accum).backward()
            loss = loss.detach()
            loss_sum += loss
            first_bad_step.copy_(torch.where((first_bad_step < 0) & ~torch.isfinite(loss),
                                             st.global_step + 1, first_bad_step))
            st.batch_in_epoch += 1
            window.batches += 1
            if sync:
                self._optimizer_step()
                st.global_step += 1
            preempted = sync and vote.poll(preemption.requested)
            at_log = sync and (st.global_step % tr.log_interval == 0)
            out_of_steps = tr.max_steps is not None and st.global_step >= tr.max_steps and sync
            if at_log or out_of_steps or preempted:
                self._log_window(window, loss_sum, first_bad_step, global_batch, progress)
                epoch_timer.absorb(window)
                window = _Window()
                loss_sum.zero_()
            if preempted:
                status = "preempted"
                break
            if out_of_steps:
                status = "max_steps"
                break
            t_wait = time.perf_counter()
        vote.drain()

        if status == "preempted" and st.batch_in_epoch < self.batches_per_epoch:
            epoch_timer.store(st)
            return status  # the caller saves a mid-epoch checkpoint
        # A stop on the epoch's last step finishes the epoch first (validation, epoch checkpoint).
        if window.batches:
            self._log_window(window, loss_sum, first_bad_step, global_batch, progress)
            epoch_timer.absorb(window)
        progress.end_epoch()
        complete = st.batch_in_epoch >= self.batches_per_epoch
        if complete:
            st.epoch += 1
            st.batch_in_epoch = 0
            _Window().store(st)
        else:
            epoch_timer.store(st)
        self._end_epoch(epoch_timer, global_batch, partial=not complete)
        return status

    def _maybe_no_sync(self, sync: bool):
        """Skip DDP's gradient all-reduce on accumulation micro-steps."""
        if not sync and isinstance(self.model, DistributedDataParallel):
            return self.model.no_sync()
        return contextlib.nullcontext()

    def _optimizer_step(self) -> None:
        clip = self.cfg.training.grad_clip_norm
        if clip is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()

    def _log_window(self, window: "_Window", loss_sum: torch.Tensor, first_bad_step: torch.Tensor,
                    global_batch: int, progress: Progress) -> None:
        """All-reduce the window's loss and the non-finite-loss flag, and log them."""
        ctx = self.ctx
        flags = first_bad_step.clone()
        ctx.all_reduce_max(flags)
        totals = torch.stack([loss_sum, torch.tensor(float(window.batches), dtype=torch.float64, device=ctx.device),
                              torch.tensor(window.data_wait, dtype=torch.float64, device=ctx.device)])
        ctx.all_reduce_sum(totals)
        bad_step = int(flags.item())
        if bad_step >= 0:
            raise NonFiniteLossError(
                f"non-finite training loss at optimizer step {bad_step} (epoch {self.state.epoch + 1}); stopped "
                "without saving. Lower training.learning_rate, set training.grad_clip_norm, try "
                "backend.amp_dtype: bfloat16, or check the data with python -m dist_seg.validate")
        loss_total, batches, wait_total = totals.tolist()
        window.elapsed = time.perf_counter() - window.started
        loss = loss_total / max(batches, 1.0)
        images_per_s = window.batches * global_batch / max(window.elapsed, 1e-9)
        wait_frac = min(1.0, (wait_total / ctx.world_size) / max(window.elapsed, 1e-9))
        lr = self.optimizer.param_groups[0]["lr"]
        window.loss_total, window.wait_frac = loss_total, wait_frac
        self.out.scalars({"train/loss": loss, "train/lr": lr, "train/throughput_img_s": images_per_s,
                          "train/data_wait_frac": wait_frac}, self.state.global_step)
        progress.update(window.batches, loss=loss, lr=lr, images_per_s=images_per_s,
                        memory_mb=_allocated_mb(ctx.device), step=self.state.global_step)

    # ------------------------------------------------------------------ epoch end

    def _end_epoch(self, timer: "_Window", global_batch: int, partial: bool) -> None:
        """Validate, visualise, record and checkpoint; ``partial`` when ``max_steps`` ended the epoch early."""
        tr, st = self.cfg.training, self.state
        epoch = st.epoch + 1 if partial else st.epoch
        result = None
        if self.val_loader is not None and (epoch % tr.val_interval == 0 or epoch == tr.epochs or partial):
            result = self.validate()
        is_best = result is not None and not math.isnan(result.mean_iou) and result.mean_iou > st.best_miou
        if is_best:
            st.best_miou, st.best_epoch = result.mean_iou, epoch
        if self.val_loader is not None and (epoch % tr.visualization_interval == 0 or epoch == tr.epochs):
            self.visualize(epoch)
        images_per_s = timer.batches * global_batch / max(timer.elapsed, 1e-9)
        record = EpochRecord(
            epoch=epoch, global_step=st.global_step,
            train_loss=timer.loss_total / max(timer.batches * self.ctx.world_size, 1),
            lr=self.optimizer.param_groups[0]["lr"], train_images_per_s=images_per_s,
            data_wait_frac=timer.wait_frac, epoch_time_s=timer.elapsed, world_size=self.ctx.world_size,
            global_batch_size=global_batch * tr.grad_accum_steps,
            val_loss=result.loss if result else None, val_mIoU=result.mean_iou if result else None,
            val_pixel_acc=result.pixel_acc if result else None, val_iou=result.iou if result else None)
        self.out.record_epoch(record)
        summary = f"epoch {epoch}/{tr.epochs} | loss {record.train_loss:.4f} | {images_per_s:.1f} img/s"
        if result is not None:
            summary += f" | val loss {result.loss:.4f} | mIoU {result.mean_iou:.4f} | acc {result.pixel_acc:.4f}"
        self.out.log(summary)
        self.save(mid_epoch=partial, is_best=is_best)

    def validate(self) -> EvalResult:
        """Evaluate on the validation split (all ranks) and log the metrics."""
        assert self.val_loader is not None
        result = evaluate(self.eval_model, self.val_loader, self.prep, self.runtime, self.criterion, self.ctx,
                          self.class_names, self.void_index)
        values = {"val/loss": result.loss, "val/mIoU": result.mean_iou, "val/pixel_acc": result.pixel_acc}
        values.update({f"val/IoU/{name}": iou for name, iou in result.iou.items() if not math.isnan(iou)})
        self.out.scalars(values, self.state.global_step)
        self.last_eval = result
        return result

    def visualize(self, epoch: int) -> None:
        """Side-by-side panels for the first validation frames (rank 0 only; no collectives)."""
        if not self.out.active or self.data.val is None:
            return
        count = min(self.cfg.training.num_visualizations, len(self.data.val))
        if count == 0:
            return
        panels = []
        model = unwrap_model(self.eval_model)
        was_training = model.training
        model.eval()
        with torch.no_grad():
            for i in range(count):
                image, mask, path = self.data.val[i]
                x, y = self.prep.eval_batch(image.unsqueeze(0), mask.unsqueeze(0))
                with self.runtime.autocast():
                    logits = model(x)["out"]
                pred = torch.nn.functional.interpolate(logits.float(), size=y.shape[-2:], mode="bilinear",
                                                       align_corners=False).argmax(1)[0]
                shown = image.permute(1, 2, 0).numpy()
                panels.append((Path(path).stem, comparison_panel(shown, mask.numpy(), pred.cpu().numpy().astype(
                    np.uint8), self.palette)))
        model.train(was_training)
        self.out.save_visualizations(epoch, panels, self.state.global_step)


class _Window:
    """Counters over a stretch of training steps between two log points."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.batches = 0
        self.data_wait = 0.0
        self.elapsed = 0.0
        self.loss_total = 0.0
        self.wait_frac = 0.0

    @classmethod
    def resumed(cls, state: TrainState) -> "_Window":
        """An epoch total that continues the one saved in ``state`` (empty at an epoch's start)."""
        window = cls()
        window.batches, window.elapsed = state.epoch_batches, state.epoch_elapsed_s
        window.loss_total, window.wait_frac = state.epoch_loss_total, state.epoch_wait_frac
        return window

    def store(self, state: TrainState) -> None:
        """Save this epoch total into ``state`` (for the next checkpoint)."""
        state.epoch_batches, state.epoch_elapsed_s = self.batches, self.elapsed
        state.epoch_loss_total, state.epoch_wait_frac = self.loss_total, self.wait_frac

    def absorb(self, other: "_Window") -> None:
        """Fold a finished log window into an epoch total."""
        wait_time = self.wait_frac * self.elapsed + other.wait_frac * other.elapsed
        self.batches += other.batches
        self.elapsed += other.elapsed
        self.loss_total += other.loss_total
        self.wait_frac = wait_time / max(self.elapsed, 1e-9)


def _allocated_mb(device: torch.device) -> float | None:
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device) / 2**20
    return None


def _resume_path(cfg: Config, out: RunOutputs) -> Path | None:
    """The checkpoint to resume from, if any; refuses to overwrite an earlier run's checkpoints."""
    setting = cfg.training.resume_from_checkpoint
    if setting is None:
        existing = out.latest_checkpoint()
        if existing is not None:
            raise DistSegError(
                f"{out.dir} already holds checkpoints of an earlier run ({existing.name}); set "
                "training.resume_from_checkpoint: auto to continue it, or choose another training.output_dir")
        return None
    if setting == "auto":
        return out.latest_checkpoint()
    return Path(setting)


def run_training(cfg: Config) -> RunSummary:
    """Train according to ``cfg``: the whole run, from process group to final checkpoint."""
    # Model config errors stop the run here, before any data is prepared; the written
    # config names the backbone actually built.
    cfg = dataclasses.replace(cfg, model=check_model_config(cfg.model, cfg.dataset.num_classes,
                                                            tuple(cfg.training.image_size)))
    ctx = setup_distributed(cfg.backend)
    out = RunOutputs(cfg, active=ctx.is_main)
    sampler: VramSampler | None = None
    vram_writer: RunWriter | None = None
    try:
        out.log(f"dist_seg: rank {ctx.rank}/{ctx.world_size} on {ctx.device}"
                + (f" ({ctx.backend})" if ctx.backend else ""))
        hazard = restart_hazard()
        if hazard is not None:
            out.warn(hazard)
        # Every rank resumes from rank 0's choice: another node's listing of the shared output
        # directory can lag behind, and ranks resuming from different checkpoints would diverge.
        resume_from = ctx.gather_objects(_resume_path(cfg, out))[0]
        trainer = Trainer(cfg, ctx, out)
        out.start(trainer.class_names, ctx.world_size)
        if resume_from is not None:
            trainer.resume(resume_from)
        elif cfg.training.resume_from_checkpoint == "auto":
            out.log("resume_from_checkpoint: auto found no checkpoint; starting fresh")

        # Each rank samples its own device into its own event files: no collectives in the thread.
        memory_log = MemoryLog(Path(cfg.training.output_dir) / "memory_diagnostics.log", ctx.rank)
        sinks: list = [memory_log]
        if cfg.telemetry.tensorboard:
            vram_writer = (out.writer if ctx.is_main and out.writer is not None
                           else RunWriter(rank_log_dir(Path(cfg.training.output_dir) / "tensorboard", ctx.rank)))
            sinks.append(TensorBoardVramSink(vram_writer))
        sampler = VramSampler(ctx.rank, ctx.device, cfg.telemetry.vram_interval_s, cfg.telemetry.vram_sampler,
                              sinks=sinks, step_fn=lambda: trainer.state.global_step, log=out.log)
        progress = Progress(cfg.telemetry.progress if ctx.is_main else "none", cfg.training.log_interval)
        with PreemptionWatch() as preemption, sampler:
            summary = trainer.fit(preemption, progress)
        progress.close()
        memory_log.write_summary(sampler.peaks())
        final = summary.final
        out.finish(
            hparams={"model": cfg.model.type, "backbone": cfg.model.backbone, "lr": cfg.training.learning_rate,
                     "global_batch": cfg.training.batch_size * ctx.world_size * cfg.training.grad_accum_steps,
                     "world_size": ctx.world_size, "epochs": cfg.training.epochs},
            metrics={"hparam/best_mIoU": summary.best_miou if summary.best_miou is not None else float("nan"),
                     "hparam/final_val_loss": final.loss if final else float("nan")})
        out.log(f"done ({summary.status}): outputs in {out.dir}"
                + (f" | best val mIoU {summary.best_miou:.4f}" if summary.best_miou is not None else ""))
        return summary
    finally:
        if sampler is not None:
            sampler.stop()
        if vram_writer is not None and vram_writer is not out.writer:
            vram_writer.close()
        teardown_distributed(ctx)
