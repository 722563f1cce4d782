"""``run_training(cfg)``: the whole run, from process group to final checkpoint.

Wires the parts of :mod:`.loop` together: process group, device choices, the model (built
before any data work, so a config mistake costs seconds, not a cache build), data
preparation, loaders, optimizer, checkpointing and the telemetry threads. One code path
serves a laptop CPU, one GPU and ``torchrun`` on many nodes.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import random
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from ..checkpoint_file import unwrap_model
from ..config import Config
from ..data.cache_loader import CacheLoader
from ..data.loader import Loader, build_loader, describe_loader, loader_processes
from ..data.palette import Palette
from ..data.pipeline import DataBundle, load_datasets, prepare
from ..errors import DistSegError
from ..models import build_model
from ..models.init_from import init_from
from ..runtime.device import Runtime, inference_runtime, resolve_runtime, without_compile_for_sync_bn
from ..runtime.distributed import DistContext, restart_hazard, setup_distributed, teardown_distributed
from ..runtime.threads import apply_compile_threads, apply_cpu_threads
from ..telemetry.memlog import FILE_NAME as MEMORY_LOG
from ..telemetry.memlog import MemoryLog
from ..telemetry.progress import Progress
from ..telemetry.samples import SampleLog
from ..telemetry.tensorboard import RunWriter, TensorBoardVramSink, rank_log_dir
from ..telemetry.vram import VramSampler
from .augment import BatchPreparer
from .checkpointer import Checkpointer, EpochPlan
from .ema import ModelEma
from .final_eval import evaluate_test_split
from .loop import RunSummary, StopReason, Trainer
from .losses import SegmentationLoss, build_criterion, class_weights
from .metrics import TrainMetrics
from .outputs import RunOutputs
from .preemption import Preempted, PreemptionWatch, preemption_raises
from .preflight import check_before_start, check_model, check_run_start
from .schedule import warmup_note
from .step import TrainStep, build_optimizer
from .summary import StartupFacts, forward_flops, parameter_count, startup_summary


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def run_training(cfg: Config) -> RunSummary:
    """Train according to ``cfg``: the whole run, from process group to final checkpoint."""
    # Model config errors stop the run here, before any data is prepared; the written
    # config names the backbone actually built.
    cfg = check_before_start(cfg)
    ctx = setup_distributed(cfg.backend)
    out = RunOutputs(cfg, active=ctx.is_main)
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(teardown_distributed, ctx)
        out.log(f"dist_seg: rank {ctx.rank}/{ctx.world_size} on {ctx.device}"
                + (f" ({ctx.backend})" if ctx.backend else ""))
        hazard = restart_hazard()
        if hazard is not None:
            out.warn(hazard)
        resume_from = check_run_start(cfg, ctx, out, cleanup)
        runtime = without_compile_for_sync_bn(resolve_runtime(cfg.backend, ctx.device, log=out.log),
                                              _syncs_batch_norm(cfg, ctx), log=out.log)
        seed_everything(cfg.training.seed)
        model = build_model(cfg.model, cfg.dataset.num_classes)
        check_model(model.to(ctx.device), cfg, runtime, ctx.device,
                    synced_ranks=ctx.world_size if _syncs_batch_norm(cfg, ctx) else 1)
        try:
            trainer = _build_trainer(cfg, ctx, out, cleanup, model, runtime, fresh=resume_from is None)
        except Preempted as stop:
            out.log(f"stopped on {stop.signal_name} while preparing the data: sequences cached so far are kept; "
                    "run again to continue")
            return RunSummary(StopReason.PREEMPTED, 0, 0, None, None, out.dir)
        out.start(trainer.palette.names, ctx.world_size)
        if resume_from is not None:
            trainer.resume(resume_from)
            out.purge_tensorboard_from(trainer.pos.global_step + 1)
        elif cfg.training.resume_from_checkpoint == "auto":
            out.log("resume_from_checkpoint: auto found no checkpoint; starting fresh")

        memory_log, sampler = _start_vram_sampler(cfg, ctx, out, trainer, cleanup)
        progress = Progress(cfg.telemetry.progress if ctx.is_main else "none", cfg.training.log_interval)
        with PreemptionWatch() as preemption, sampler:
            summary = trainer.fit(preemption, progress)
        try:
            memory_log.write_summary(sampler.peaks())
        except OSError as exc:  # a full disk at the end must not fail a finished, saved training
            out.warn(f"cannot write the memory summary to {memory_log.path} ({exc})")
        test = (evaluate_test_split(cfg, ctx, trainer.inference_runtime, out, trainer.pos.global_step, progress)
                if summary.status is StopReason.COMPLETED else None)
        progress.close()
        final, tr = summary.final, cfg.training
        out.finish(
            hparams={"model": cfg.model.type, "backbone": cfg.model.backbone, "lr": tr.learning_rate,
                     "global_batch": tr.batch_size * ctx.world_size * tr.grad_accum_steps,
                     "world_size": ctx.world_size, "epochs": tr.epochs},
            metrics={"hparam/best_mIoU": summary.best_miou if summary.best_miou is not None else float("nan"),
                     "hparam/final_val_loss": final.loss if final else float("nan"),
                     "hparam/test_mIoU": test.mean_iou if test else float("nan")})
        out.log(f"done ({summary.status.value}): outputs in {out.dir}"
                + (f" | best val mIoU {summary.best_miou:.4f}" if summary.best_miou is not None else ""))
        return summary


def _build_trainer(cfg: Config, ctx: DistContext, out: RunOutputs, cleanup: contextlib.ExitStack,
                   model: torch.nn.Module, runtime: Runtime, fresh: bool = True) -> Trainer:
    """Every part of the run around ``model`` (built and checked by the caller): data, loaders, optimizer, telemetry.

    ``fresh``: no checkpoint will be resumed, so ``model.init_from`` applies (a resume restores every weight).
    """
    tr = cfg.training
    # Visualisations and the final evaluation label frames as predict / evaluate would.
    inference = inference_runtime(ctx.device)
    if tr.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    palette = Palette.from_config(cfg.dataset)
    flops = forward_flops(model, tuple(tr.image_size)) if ctx.is_main else None
    if cfg.model.init_from is not None and fresh:
        init_from(model, cfg.model.init_from, log=out.log)

    with preemption_raises():  # a cache build has no step boundary to stop at
        data = _prepare_data(cfg, ctx, out, cleanup)
    train_loader = build_loader(data.train, tr, ctx, train=True, on_device=cfg.dataset.cache_on_device)
    cleanup.callback(_close_loader, train_loader)
    val_loader = None
    if data.val is not None and len(data.val):
        val_loader = build_loader(data.val, tr, ctx, train=False)
        cleanup.callback(_close_loader, val_loader)
    # After the loaders: what torch may use depends on whether they decode in worker processes.
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    threads = apply_cpu_threads(cfg.backend.cpu_threads, loader_processes(train_loader), ctx.device,
                                local_processes=local_processes)
    if runtime.compile:
        apply_compile_threads(local_processes)
    # At least 1: build_loader has checked that the training split gives every rank an optimizer step.
    steps_per_epoch = len(train_loader) // tr.grad_accum_steps
    plan = EpochPlan(steps_per_epoch, tr.grad_accum_steps, tr.epochs, len(data.train))

    train_model, eval_model = _place_model(model, cfg, ctx, runtime, out)
    optimizer = build_optimizer(train_model.parameters(), tr)
    scaler = runtime.grad_scaler()
    weight = class_weights(data.train_class_pixel_counts, tr.class_weighting, cfg.dataset.void_index)
    criterion = build_criterion(tr.loss, weight).to(ctx.device)
    ema = ModelEma(unwrap_model(train_model), tr.ema.decay, tr.ema.warmup) if tr.ema.enabled else None
    aug_generator = torch.Generator().manual_seed(tr.seed * 1000 + ctx.rank)
    global_batch = tr.batch_size * ctx.world_size
    metrics = TrainMetrics(ctx, global_batch)
    out.log("run:")
    for line in startup_summary(cfg, runtime, StartupFacts(
            parameters=parameter_count(model), flops=flops, train_frames=len(data.train),
            val_frames=len(data.val) if data.val is not None else 0, steps_per_epoch=plan.steps_per_epoch,
            total_steps=plan.total_steps, world_size=ctx.world_size, loader=describe_loader(train_loader),
            threads=threads, inference_precision=inference.precision)):
        out.log(line)
    _log_training_notes(cfg, out, data, palette, weight)
    capped = warmup_note(plan.total_steps, tr)
    if capped:
        out.log(capped)
    return Trainer(
        cfg=cfg, ctx=ctx, out=out, runtime=runtime, inference_runtime=inference,
        step=TrainStep(train_model, criterion, optimizer, scaler, runtime.autocast, tr.grad_clip_norm, ema=ema,
                       out_of_memory=(f"training.batch_size {tr.batch_size}: a training step of {tr.batch_size} "
                                      f"samples of {tr.image_size[0]}x{tr.image_size[1]}",
                                      "lower training.batch_size (raise training.grad_accum_steps to keep the "
                                      "global batch) or training.image_size")),
        eval_model=eval_model,
        prep=BatchPreparer(ctx.device, runtime.memory_format, tuple(tr.image_size), cfg.dataset.void_index),
        aug_generator=aug_generator, train_loader=train_loader, val_loader=val_loader, val_data=data.val,
        palette=palette, plan=plan, metrics=metrics,
        checkpointer=Checkpointer(cfg, ctx, out, palette, plan, model=unwrap_model(train_model), optimizer=optimizer,
                                  scaler=scaler,
                                  metrics=metrics, aug_generator=aug_generator, ema=ema, splits=data.splits),
        val_criterion=SegmentationLoss(weight).to(ctx.device), ema=ema, train_data=data.train,
        sample_log=(SampleLog(Path(tr.output_dir) / "samples" / f"rank{ctx.rank}.jsonl")
                    if cfg.telemetry.sample_log else None))


def _prepare_data(cfg: Config, ctx: DistContext, out: RunOutputs, cleanup: contextlib.ExitStack) -> DataBundle:
    """Decode and cache once per node (local rank 0), then every rank opens the caches.

    Local rank 0 keeps the node's caches locked against pruning until ``cleanup`` closes.
    """
    failure = None
    if ctx.is_local_main:
        try:
            prepare(cfg, log=out.log if ctx.is_main else (lambda _m: None), progress=ctx.is_main,
                    world_size=ctx.world_size, hold=cleanup)
        except DistSegError as exc:
            failure = exc
    # Also the barrier the other ranks wait at: a data error stops every rank here, reported once.
    ctx.raise_if_any_failed(failure)
    return load_datasets(cfg)


def _close_loader(loader: Loader) -> None:
    if isinstance(loader, CacheLoader):
        loader.close()


def _syncs_batch_norm(cfg: Config, ctx: DistContext) -> bool:
    """Whether BatchNorm becomes SyncBatchNorm: asked for, and NCCL across several ranks to sync over."""
    return cfg.backend.sync_bn and ctx.is_distributed and ctx.backend == "nccl"


def _place_model(model: torch.nn.Module, cfg: Config, ctx: DistContext, runtime: Runtime,
                 out: RunOutputs) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The model on the device for training and for evaluation: SyncBN, layout, compile, then DDP (in that order).

    Resumed weights are loaded later into the unwrapped module; every rank loads the same
    checkpoint, so DDP's initial broadcast of rank 0's random weights does no harm.
    """
    if cfg.backend.sync_bn:
        if _syncs_batch_norm(cfg, ctx):
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
            out.log("SyncBatchNorm: BatchNorm statistics are synchronised across ranks")
        else:
            out.warn("backend.sync_bn is on but needs NCCL across several GPUs "
                     f"(this run: {ctx.backend or 'single process'}); keeping per-rank BatchNorm")
    model = model.to(ctx.device, memory_format=runtime.memory_format)
    compiled = torch.compile(model, mode=runtime.compile_mode) if runtime.compile else model
    if not ctx.is_distributed:
        return compiled, compiled
    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    # Gradients live in DDP's all-reduce buckets (no copy in or out, less memory); buffers are
    # broadcast from rank 0 before each forward only when the ranks' copies can differ (always
    # once at the wrap: every rank starts from rank 0's).
    sync_buffers = not buffers_stay_in_sync(model)
    buffers = ({"forward_sync_buffers": sync_buffers} if _ddp_takes("forward_sync_buffers")
               else {"broadcast_buffers": sync_buffers})  # torch < 2.14, where the init sync came with it
    return DistributedDataParallel(compiled, device_ids=device_ids, gradient_as_bucket_view=True,
                                   **buffers), compiled


def _ddp_takes(argument: str) -> bool:
    return argument in inspect.signature(DistributedDataParallel.__init__).parameters


def buffers_stay_in_sync(model: torch.nn.Module) -> bool:
    """Whether every rank's buffers stay equal without DDP broadcasting them: no buffers, or only SyncBatchNorm's.

    SyncBatchNorm updates its running statistics from the all-reduced batch statistics, so every
    rank computes the same values from the same start. Plain BatchNorm's statistics follow each
    rank's own batches, and a custom model's buffers may do anything: those are broadcast.
    """
    owners = [module for module in model.modules() if any(True for _ in module.buffers(recurse=False))]
    return all(isinstance(module, torch.nn.SyncBatchNorm) for module in owners)


def _log_training_notes(cfg: Config, out: RunOutputs, data: DataBundle, palette: Palette,
                        weight: torch.Tensor | None) -> None:
    """What the summary leaves out: the class weights and a missing validation split."""
    if weight is not None:
        pairs = ", ".join(f"{n}={w:.2f}" for n, w in zip(palette.names, weight.tolist(), strict=False))
        out.log(f"class weights ({cfg.training.class_weighting}): {pairs}")
    if data.val is None or not len(data.val):
        out.log("no validation split: validation and visualizations are skipped")


def _start_vram_sampler(cfg: Config, ctx: DistContext, out: RunOutputs, trainer: Trainer,
                        cleanup: contextlib.ExitStack) -> tuple[MemoryLog, VramSampler]:
    """The per-rank VRAM sampler thread; each rank samples its own device into its own event files."""
    output_dir = Path(cfg.training.output_dir)
    memory_log = MemoryLog(output_dir / MEMORY_LOG, ctx.rank)
    sinks: list = [memory_log]
    if cfg.telemetry.tensorboard:
        if ctx.is_main and out.writer is not None:
            writer = out.writer
        else:
            # A resumed run hides what the killed one wrote after its checkpoint (steps are trained again).
            writer = RunWriter(rank_log_dir(output_dir / "tensorboard", ctx.rank),
                               purge_step=trainer.pos.global_step + 1 if trainer.pos.global_step else None)
            cleanup.callback(writer.close)
        sinks.append(TensorBoardVramSink(writer))
    sampler = VramSampler(ctx.rank, ctx.device, cfg.telemetry.vram_interval_s, cfg.telemetry.vram_sampler,
                          sinks=sinks, step_fn=lambda: trainer.pos.global_step, log=out.log)
    cleanup.callback(sampler.stop)
    return memory_log, sampler
