"""GPU check parts that run the product's own commands and read what they leave behind.

``python -m dist_seg.synth``, ``python -m dist_seg.train`` (plain and under torchrun),
``python -m dist_seg.predict`` and ``python -m dist_seg.evaluate`` run as child processes,
each time-boxed by its part's deadline; the parts then read the run's contract outputs
(``history.json``, checkpoints, ``memory_diagnostics.log``, TensorBoard event files).
Nothing here creates a CUDA context: checkpoints are loaded onto the CPU.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import statistics
import sys
from pathlib import Path
from typing import Any

from ..data import raw_config
from .parts import NO_CUDA, PartContext, Skip
from .plan import e2e_steps, e2e_steps_per_epoch
from .proc import REPO_ROOT, CommandResult

DEMO_CONFIG = REPO_ROOT / "configs" / "demo.yaml"
DEMO_TEST_SEQUENCE = "Video_007"  # configs/demo.yaml's test split
DATA_WAIT_TARGET = 0.05
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
# A run needs this much of the part's budget left to be worth starting.
MIN_RUN_S = 15.0
ON_DEVICE = "on-device cache"
# Seconds the two-ranks-on-one-device probe may take: a refused NCCL init fails in seconds, a hang must not eat the part.
TWO_RANK_PROBE_S = 60.0


# ----------------------------------------------------------------------------- shared helpers


def synth_data(ctx: PartContext, label: str, sequences: int, frames: int, size: tuple[int, int]) -> Path:
    """A synthetic dataset under the shared scratch folder, generated once (under a temporary name, then renamed)."""
    height, width = size
    root = ctx.scratch / f"data-{label}-{sequences}x{frames}-{height}x{width}"
    if root.is_dir():
        return root
    tmp = root.with_name(root.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    result = ctx.python(f"synth-{label}", "dist_seg.synth", str(tmp), "--sequences", str(sequences),
                        "--frames", str(frames), "--size", f"{height}x{width}")
    if not result.ok:
        raise RuntimeError(f"generating the {label} dataset failed: {result.describe()}")
    os.replace(tmp, root)
    return root


def demo_data(ctx: PartContext) -> Path:
    sequences, frames, size = ctx.sizes.demo_data
    return synth_data(ctx, "demo", sequences, frames, size)


def demo_overrides(ctx: PartContext, data: Path, output_dir: Path, *extra: str) -> list[str]:
    """``--set`` arguments for configs/demo.yaml on the check's data, device and sizes."""
    # One checkpoint in rotation and no final test evaluation: the predict part evaluates.
    items = [f"dataset.root={data}", f"dataset.cache_dir={ctx.scratch / 'cache-demo'}",
             f"training.output_dir={output_dir}", f"backend.target={ctx.sizes.target}", "telemetry.progress=log",
             f"training.batch_size={ctx.sizes.demo_batch}", "training.max_checkpoints=1", "training.final_eval=false",
             *ctx.sizes.demo_overrides, *extra]
    return [arg for item in items for arg in ("--set", item)]


def train_demo(ctx: PartContext, label: str, output_dir: Path, *extra: str,
               launcher: tuple[str, ...] = ()) -> CommandResult:
    """``python -m dist_seg.train configs/demo.yaml --set ...`` (or under ``launcher``, e.g. torchrun)."""
    argv = [sys.executable, *launcher, "-m", "dist_seg.train", str(DEMO_CONFIG),
            *demo_overrides(ctx, demo_data(ctx), output_dir, *extra)]
    return ctx.command(label, argv)


def read_history(output_dir: Path) -> list[dict[str, Any]]:
    return json.loads((output_dir / "history.json").read_text())


def latest_checkpoint(output_dir: Path) -> Path | None:
    found = sorted((output_dir / "checkpoints").glob("epoch_*.pth"))
    return found[-1] if found else None


def inspect_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint as a user would (``weights_only=True``) and read its GradScaler and step counts.

    An optimizer step the GradScaler skipped (inf/NaN gradients) advances the global step but
    not the optimizer's own per-parameter step count; the difference is the skipped steps.
    """
    import torch

    from dist_seg.models.weights import unwrap_key

    state = torch.load(path, map_location="cpu", weights_only=True)
    wrapped = [k for k in state["model"] if unwrap_key(k) != k]
    steps = [float(s["step"]) for s in state["optimizer"]["state"].values() if "step" in s]
    optimizer_steps = int(max(steps)) if steps else 0
    scaler = state.get("scaler") or {}
    return {"file": path.name, "loads_weights_only": True, "epoch": state["epoch"],
            "global_step": state["global_step"], "optimizer_steps": optimizer_steps,
            "skipped_steps": state["global_step"] - optimizer_steps,
            "grad_scaler_scale": float(scaler["scale"]) if "scale" in scaler else "GradScaler disabled",
            "wrapper_prefixed_keys": len(wrapped)}


def log_lines(result: CommandResult, pattern: str) -> list[str]:
    """Lines of the command's own output that match ``pattern``.

    A log may hold earlier commands (a reused ``--work`` folder appends): only what follows the
    last ``$ command`` header counts, and never the header, whose ``--set`` items would match.
    """
    regex = re.compile(pattern)
    lines = result.log_path.read_text(errors="replace").splitlines()
    start = max((i for i, line in enumerate(lines) if line.startswith("$ ")), default=-1) + 1
    return [line for line in lines[start:] if regex.search(line)]


def _training_run(ctx: PartContext, label: str, result: CommandResult, output_dir: Path,
                  *, loss_must_fall: bool = True) -> dict[str, Any]:
    """Fields and checks every finished demo training run gets: exit, loss trend, checkpoints."""
    fields: dict[str, Any] = {"wall_s": round(result.seconds, 1), "exit": result.returncode,
                              # The start-up summary's precision line: AMP dtype, channels-last, compile.
                              "runtime": next((line.strip() for line in log_lines(result, r"^\s*precision ")),
                                              "not logged")}
    if not ctx.check(f"{label}: finishes", result.ok, result.describe()):
        return fields
    history = read_history(output_dir)
    losses = [r["train_loss"] for r in history]
    fields.update(epochs=len(history), train_loss_first=round(losses[0], 4), train_loss_last=round(losses[-1], 4),
                  images_per_s_last_epoch=round(history[-1]["train_images_per_s"], 1))
    if loss_must_fall:
        ctx.check(f"{label}: training loss falls", len(losses) >= 2 and losses[-1] < losses[0],
                  f"train_loss per epoch {[round(x, 4) for x in losses]}")
    checkpoint = latest_checkpoint(output_dir)
    if ctx.check(f"{label}: checkpoint written", checkpoint is not None, f"nothing in {output_dir / 'checkpoints'}"):
        fields["checkpoint"] = inspect_checkpoint(checkpoint)
        ctx.check(f"{label}: checkpoint holds the unwrapped model", fields["checkpoint"]["wrapper_prefixed_keys"] == 0)
    return fields


# ----------------------------------------------------------------------------- parts


def demo(ctx: PartContext) -> None:
    """configs/demo.yaml on the device: bf16 + channels-last + compile first, then float16 + GradScaler and a resume."""
    sizes = ctx.sizes
    fast_dir = ctx.work / "bf16"
    shutil.rmtree(fast_dir, ignore_errors=True)
    compile_ = sizes.demo_compile
    fast = train_demo(ctx, "demo-bf16", fast_dir, "backend.amp_dtype=bfloat16", "backend.channels_last=true",
                      f"backend.compile={str(compile_).lower()}", f"training.epochs={sizes.demo_fast_epochs}")
    fast_fields = _training_run(ctx, "bf16 channels_last compile", fast, fast_dir)
    if compile_:
        fast_fields["compile_log"] = log_lines(fast, r"(?i)compil")[:6]
    else:
        fast_fields["compile"] = "skipped: --cpu-smoke (compiling takes minutes on a CPU)"
    ctx.set(bf16_channels_last_compile=fast_fields)

    fp16_dir = ctx.work / "fp16"
    shutil.rmtree(fp16_dir, ignore_errors=True)
    fp16 = train_demo(ctx, "demo-fp16", fp16_dir, "backend.amp_dtype=float16", "backend.channels_last=false",
                      "backend.compile=false", f"training.epochs={sizes.demo_epochs}")
    fields = _training_run(ctx, "float16", fp16, fp16_dir)
    if not ctx.on_gpu:
        fields["grad_scaler"] = f"{NO_CUDA} (float16 autocast needs a GPU: AMP is off, the GradScaler disabled)"
    ctx.set(float16=fields)
    if fp16.ok:
        best = fp16_dir / "best_model.pth"
        ctx.share(demo_checkpoint=str(best if best.is_file() else latest_checkpoint(fp16_dir)))
        if best.is_file():
            fields["best_model"] = inspect_checkpoint(best)
        before = fields.get("checkpoint", {}).get("global_step", 0)
        resumed = train_demo(ctx, "demo-resume", fp16_dir, "backend.amp_dtype=float16",
                             "backend.channels_last=false", "backend.compile=false",
                             "training.resume_from_checkpoint=auto", f"training.epochs={sizes.demo_epochs + 1}")
        resume = _training_run(ctx, "resume", resumed, fp16_dir, loss_must_fall=False)
        resume["resumed_line"] = next(iter(log_lines(resumed, r"resumed from")), "not logged")
        if resumed.ok:
            ctx.check("resume: continues from the checkpoint", resume["resumed_line"] != "not logged"
                      and resume.get("epochs") == sizes.demo_epochs + 1
                      and resume.get("checkpoint", {}).get("global_step", 0) > before,
                      f"{resume['resumed_line']}; {resume.get('epochs')} epochs in history.json")
        ctx.set(resume=resume)
    ctx.summary = _demo_summary(ctx.fields)


def _demo_summary(fields: dict[str, Any]) -> str:
    parts = []
    for key, label in (("float16", "fp16"), ("bf16_channels_last_compile", "bf16+cl+compile")):
        run = fields.get(key, {})
        if "train_loss_first" in run:
            parts.append(f"{label} loss {run['train_loss_first']:.3g}->{run['train_loss_last']:.3g} "
                         f"({run['wall_s']:.0f} s)")
    scaler = fields.get("float16", {}).get("checkpoint", {})
    if isinstance(scaler.get("grad_scaler_scale"), float):
        parts.append(f"scale {scaler['grad_scaler_scale']:g}, {scaler['skipped_steps']} skipped")
    return "; ".join(parts)


def e2e(ctx: PartContext) -> None:
    """Training runs through the full cache: 1, 2, 4 pinned gather threads, then the on-device cache.

    Each run ends inside its first epoch (one mid-epoch checkpoint, deleted once read), so the
    part measures training, not epoch ends; images/s and data wait come from its TensorBoard windows.
    """
    sizes = ctx.sizes
    sequences, frames, size = sizes.e2e_data
    data = synth_data(ctx, "e2e", sequences, frames, size)
    spec = sizes.e2e_model
    steps = e2e_steps(sizes)
    precision = f"{sizes.e2e_amp_dtype} autocast" if sizes.e2e_amp_dtype else "float32"
    ctx.set(model=spec.describe(), steps_per_run=steps, steps_per_window=sizes.e2e_log_interval,
            steps_per_epoch=e2e_steps_per_epoch(sizes),
            data=f"{sequences} sequences x {frames} frames drawn at {size[0]}x{size[1]}, cached at "
                 f"{spec.image_size[0]}x{spec.image_size[1]}",
            settings=f"full cache (images cached), {precision}, channels_last auto, compile off "
                     "(four compilations would not fit the budget; a compiled step waits more on data)")
    runs: dict[str, Any] = {}
    variants = [(f"{w} thread{'s' if w > 1 else ''}", w, False) for w in sizes.e2e_workers]
    variants.append((ON_DEVICE, max(sizes.e2e_workers), True))
    for key, workers, on_device in variants:  # one entry in runs per variant, in this order
        if ctx.remaining() < MIN_RUN_S:
            runs[key] = f"skipped: {ctx.remaining():.0f} s left in the part's budget"
            continue
        label = "e2e-on-device" if on_device else f"e2e-workers{workers}"
        run_dir = ctx.work / label
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir(parents=True)
        raw = raw_config(data, run_dir / "out", ctx.scratch / "cache-e2e", image_size=spec.image_size,
                         batch_size=spec.batch_size, num_workers=workers, backbone=spec.backbone,
                         target=sizes.target)
        raw["dataset"]["cache_on_device"] = on_device
        raw["backend"].update(compile=False, **({"amp_dtype": sizes.e2e_amp_dtype} if sizes.e2e_amp_dtype
                                                 else {"amp": False}))
        raw["training"].update(max_steps=steps, log_interval=sizes.e2e_log_interval, max_checkpoints=1)
        raw["telemetry"].update(vram_interval_s=0.25)
        config = run_dir / "config.yaml"
        config.write_text(json.dumps(raw, indent=1))  # JSON is YAML: no YAML writer needed here
        result = ctx.python(label, "dist_seg.train", str(config))
        if not ctx.check(f"{key}: finishes", result.ok, result.describe()):
            runs[key] = {"exit": result.returncode}
            continue
        runs[key] = {"wall_s": round(result.seconds, 1), **_throughput(run_dir / "out")}
        runs[key]["loader"] = next((line.strip() for line in log_lines(result, r"^\s*loader\s")), "not logged")
        checkpoint = latest_checkpoint(run_dir / "out")
        ctx.check(f"{key}: ends inside its first epoch (one mid-epoch checkpoint)",
                  checkpoint is not None and "_batch_" in checkpoint.name,
                  f"checkpoint {checkpoint.name if checkpoint else 'none'}")
        ctx.share(e2e_run_dir=str(run_dir / "out"))
        # The checkpoint (~500 MB for the production model) is not needed; the telemetry part reads the logs.
        shutil.rmtree(run_dir / "out" / "checkpoints", ignore_errors=True)
        ctx.set(runs=runs)
    done = {k: v for k, v in runs.items() if isinstance(v, dict) and "images_per_s" in v}
    pinned = {k: v for k, v in done.items() if k != ON_DEVICE}
    keeping_up = [workers for key, workers, _on_device in variants
                  if key in pinned and pinned[key]["data_wait_frac_median"] < DATA_WAIT_TARGET]
    ctx.set(runs=runs, fewest_threads_under_5pct_wait=min(keeping_up) if keeping_up else
            f"none of {', '.join(map(str, sizes.e2e_workers))}")
    if ON_DEVICE in done and pinned:
        best_key = max(pinned, key=lambda k: pinned[k]["images_per_s"])
        ctx.set(on_device_vs_pinned={
            "on_device_images_per_s": done[ON_DEVICE]["images_per_s"],
            "best_pinned_images_per_s": pinned[best_key]["images_per_s"], "best_pinned": best_key,
            "ratio": round(done[ON_DEVICE]["images_per_s"] / pinned[best_key]["images_per_s"], 3),
            "on_device_wait": done[ON_DEVICE]["data_wait_frac_median"],
            "best_pinned_wait": pinned[best_key]["data_wait_frac_median"]})
    ctx.summary = "; ".join(f"{k}: {v['images_per_s']:.3g} img/s, wait {v['data_wait_frac_median']:.1%}"
                            for k, v in done.items())


def _throughput(output_dir: Path) -> dict[str, Any]:
    """images/s and data-wait fraction: TensorBoard windows (warm-up dropped) if readable, else history.json."""
    if importlib.util.find_spec("tensorboard") is not None:
        from ..training_runs import read_windows

        windows = read_windows(output_dir / "tensorboard")
        return {"images_per_s": round(statistics.median(windows.images_per_s), 2),
                "data_wait_frac_median": round(statistics.median(windows.data_wait_frac), 4),
                "data_wait_frac_max": round(max(windows.data_wait_frac), 4),
                "source": f"TensorBoard, {len(windows.images_per_s)} windows after the warm-up window"}
    history = read_history(output_dir)
    images = sum(r["train_images_per_s"] * r["epoch_time_s"] for r in history)
    seconds = sum(r["epoch_time_s"] for r in history)
    wait = sum(r["data_wait_frac"] * r["epoch_time_s"] for r in history) / max(seconds, 1e-9)
    return {"images_per_s": round(images / max(seconds, 1e-9), 2), "data_wait_frac_median": round(wait, 4),
            "source": "history.json epoch totals, warm-up included (tensorboard is not installed)"}


_SAMPLE = re.compile(r"VRAM: (?P<alloc>\S+) MB \(alloc\), (?P<reserved>\S+) MB \(reserved\), (?P<free>\S+) MB free "
                     r"/ (?P<total>\S+) MB total(?:.*?process (?P<process>\S+) MB, non-torch (?P<non_torch>\S+) MB)?")
_HOST_SAMPLE = re.compile(r" host RSS: \S+ MB \| rank \d+, step")
_ORIGINS = ("own PID visible", "own PID not visible: device-level", "source none")


def telemetry(ctx: PartContext) -> None:
    """The VRAM sampler's figures over the e2e part's last run: memory_diagnostics.log and vram/rank0/* tags."""
    run = ctx.shared.get("e2e_run_dir")
    if run is None:
        raise Skip("needs the e2e part's training run (run it first: --parts e2e,telemetry)")
    output_dir = Path(run)
    log = output_dir / "memory_diagnostics.log"
    lines = log.read_text().splitlines()
    # A GPU rank writes VRAM lines; a CPU rank (the --cpu-smoke run) its host RSS, once a minute.
    samples = [line for line in lines if (_SAMPLE.search(line) or _HOST_SAMPLE.search(line)) and " PEAKS " not in line]
    peaks = [line for line in lines if " PEAKS " in line]
    origins = sorted({origin for line in lines for origin in _ORIGINS if origin in line})
    ctx.set(log=str(log), samples=len(samples), origin=origins or "no origin named",
            first_sample=samples[0] if samples else None, last_sample=samples[-1] if samples else None,
            peaks_line=peaks[-1] if peaks else None)
    ctx.check("memory_diagnostics.log holds samples", bool(samples), f"{len(lines)} lines in {log}")
    ctx.check("each sample names its origin (own PID visible, or the fallback)", bool(origins))
    for name in ("process", "reserved", "non_torch"):
        values = [_number(m.group(name)) for line in samples if (m := _SAMPLE.search(line))]
        known = [v for v in values if v is not None]
        ctx.set(**{f"{name}_mb": _spread(known) if known else (NO_CUDA if not ctx.on_gpu else "n/a in every sample")})
    if ctx.on_gpu:
        ctx.check("the sampler reads the driver (source nvml, not none)", "source none" not in origins,
                  "see the [vram rank 0] lines of the e2e run's log")
        ctx.check("allocator figures present", isinstance(ctx.fields["reserved_mb"], dict))
    ctx.set(tensorboard=_vram_tags(output_dir / "tensorboard"))
    origin = "PID visible" if "own PID visible" in origins else (origins[0] if origins else "?")
    reserved = ctx.fields["reserved_mb"]
    ctx.summary = f"{len(samples)} samples, {origin}" + (
        f", reserved max {reserved['max']:.0f} MB" if isinstance(reserved, dict) else "")


def _number(text: str | None) -> float | None:
    return None if text in (None, "n/a") else float(text)


def _spread(values: list[float]) -> dict[str, float]:
    return {"min": round(min(values), 1), "median": round(statistics.median(values), 1), "max": round(max(values), 1)}


def _vram_tags(log_dir: Path) -> Any:
    """Max of every ``vram/rank0/*`` and ``host/rank0/*`` scalar in the run's TensorBoard files."""
    if importlib.util.find_spec("tensorboard") is None:
        return "not read: tensorboard is not installed"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    found: dict[str, Any] = {}
    for directory in sorted({p.parent for p in log_dir.rglob("events.out.tfevents.*")}):
        acc = EventAccumulator(str(directory), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            if tag.startswith(("vram/rank0/", "host/rank0/")):
                values = [e.value for e in acc.Scalars(tag)]
                found[tag] = {"points": len(values), "max": round(max(values), 1)}
    return found or "no vram/rank0 or host/rank0 tags"


def torchrun(ctx: PartContext) -> None:
    """``torchrun --nproc_per_node=1`` with NCCL (gloo on a CPU) and SyncBatchNorm, then two ranks on one device.

    One rank proves the launcher, the NCCL process group, DDP, the SyncBatchNorm conversion and
    what it does to ``backend.compile``; it cannot prove a cross-rank reduction (SyncBatchNorm
    with one rank does not synchronise). Two ranks need two devices: the last run asks this NCCL
    whether two ranks may share the one GPU (NCCL 2.5 and later refuse: "Duplicate GPU
    detected"). Cross-rank results are tested on the CPU with gloo in the test suite.
    """
    backend = ctx.sizes.dist_backend
    launcher = ("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1")
    compile_ = str(ctx.sizes.torchrun_compile).lower()
    for label, extra in ctx.sizes.torchrun_runs:
        output_dir = ctx.work / label
        shutil.rmtree(output_dir, ignore_errors=True)
        result = train_demo(ctx, f"torchrun-{label}", output_dir, f"backend.dist_backend={backend}",
                            f"backend.compile={compile_}", "training.epochs=1", *extra, launcher=launcher)
        fields: dict[str, Any] = {"wall_s": round(result.seconds, 1), "exit": result.returncode,
                                  "rank_line": next(iter(log_lines(result, r"dist_seg: rank 0/")), "not logged")}
        if ctx.check(f"{label}: finishes", result.ok, result.describe()):
            ctx.check(f"{label}: process group on {backend}", f"({backend})" in fields["rank_line"],
                      fields["rank_line"])
            checkpoint = latest_checkpoint(output_dir)
            if ctx.check(f"{label}: checkpoint written", checkpoint is not None):
                fields["checkpoint"] = inspect_checkpoint(checkpoint)
                ctx.share(torchrun_checkpoint=str(checkpoint))
        if extra:
            # The trainer's conversion line, or its warning that this run keeps per-rank BatchNorm.
            fields["sync_bn"] = next(iter(log_lines(result, r"^SyncBatchNorm: |^warning: backend\.sync_bn ")),
                                     "not logged")
            fields["sync_bn_and_compile"] = (
                next(iter(log_lines(result, r"^compile off: ")), "compile stayed on (no SyncBatchNorm in this run)")
                if ctx.sizes.torchrun_compile else "not asked: --cpu-smoke (compiling takes minutes on a CPU)")
            if result.ok and backend == "nccl":
                ctx.check("sync_bn: BatchNorm converted to SyncBatchNorm", "SyncBatchNorm:" in fields["sync_bn"],
                          fields["sync_bn"])
                ctx.check("sync_bn: compile turned off with the reason logged",
                          fields["sync_bn_and_compile"].startswith("compile off:"), fields["sync_bn_and_compile"])
        ctx.set(**{label: fields})
    ctx.set(two_ranks_one_device=_two_ranks_one_device(ctx, backend))
    ctx.summary = ", ".join(f"{label} exit {ctx.fields[label]['exit']} ({ctx.fields[label]['wall_s']:.0f} s)"
                            for label, _extra in ctx.sizes.torchrun_runs if label in ctx.fields)
    ctx.summary += f"; two ranks on one device: {ctx.fields['two_ranks_one_device']['outcome']}"


def _two_ranks_one_device(ctx: PartContext, backend: str) -> dict[str, Any]:
    """Whether two ranks of ``backend`` may share the one device: the probe's outcome, as found, never a failure."""
    result = ctx.command("torchrun-two-ranks", [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                "--nproc_per_node=2", "-m", "benchmarks.gpu_check.share_probe",
                                                backend, ctx.sizes.target], limit_s=TWO_RANK_PROBE_S)
    output = "\n".join(log_lines(result, r"."))
    return {**probe_outcome(backend, result.ok, output, result.describe()), "wall_s": round(result.seconds, 1)}


_PROBE_LINE = re.compile(r"share_probe: rank \d+ of \d+ on \S+: all_reduce gave \S+ \(expected \S+\)")
# NCCL's own words first ("Duplicate GPU detected ..."), else torch's wrapper ("... invalid usage ...").
_REFUSALS = (re.compile(r"(?i)[^\n]*duplicate gpu[^\n]*"), re.compile(r"(?i)[^\n]*invalid usage[^\n]*"))


def probe_outcome(backend: str, ok: bool, output: str, describe: str) -> dict[str, Any]:
    """What the two-ranks probe's output says: allowed (both ranks reduced), refused (and why), or failed.

    The ranks' lines are counted anywhere in the output: two ranks writing to one pipe may
    still share a line.
    """
    reduced = _PROBE_LINE.findall(output)
    refused = next((m for m in (pattern.search(output) for pattern in _REFUSALS) if m), None)
    if ok and len(reduced) == 2:
        outcome = "allowed: both ranks reduced"
    elif refused:
        outcome = f"refused by {backend}: {refused.group(0).strip()[:200]}"
    elif ok:
        outcome = f"unclear: the launcher exited 0 but {len(reduced)} of 2 ranks reported ({describe})"
    else:
        outcome = f"failed: {describe}"
    return {"outcome": outcome, "ranks": reduced}


def predict(ctx: PartContext) -> None:
    """``dist_seg.predict`` over the demo dataset and ``dist_seg.evaluate`` on its test split: images/s."""
    checkpoint = ctx.shared.get("demo_checkpoint") or ctx.shared.get("torchrun_checkpoint")
    if checkpoint is None:
        raise Skip("needs a checkpoint from the demo or torchrun part (run one of them first)")
    data = demo_data(ctx)
    frames = sum(1 for p in (data / "Images").rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    out = ctx.work / "predictions"
    shutil.rmtree(out, ignore_errors=True)
    result = ctx.python("predict", "dist_seg.predict", "--checkpoint", checkpoint, str(data), "--out", str(out),
                        "--device", ctx.sizes.target, "--batch-size", str(ctx.sizes.predict_batch))
    written = len(list(out.rglob("*_ids.png"))) if out.is_dir() else 0
    fields: dict[str, Any] = {"checkpoint": checkpoint, "frames": frames, "wall_s": round(result.seconds, 1),
                              "images_per_s_wall": round(frames / result.seconds, 2),
                              "note": "wall time of the whole command: process start, model load, PNG decode and "
                                      "three PNG writes per frame included"}
    if ctx.check("predict: finishes", result.ok, result.describe()):
        ctx.check("predict: one class-id PNG per frame", written == frames, f"{written} of {frames}")
    ctx.set(predict=fields)

    if importlib.util.find_spec("dist_seg.evaluate") is None:
        ctx.set(evaluate="not available: this dist_seg has no dist_seg.evaluate module yet")
    else:
        eval_out = ctx.work / "evaluate"
        shutil.rmtree(eval_out, ignore_errors=True)
        test_frames = sum(1 for p in (data / "Images" / DEMO_TEST_SEQUENCE).iterdir()
                          if p.suffix.lower() in IMAGE_SUFFIXES)
        evaluated = ctx.python("evaluate", "dist_seg.evaluate", "--checkpoint", checkpoint, "--split", "test",
                               "--out", str(eval_out))
        eval_fields: dict[str, Any] = {"frames": test_frames, "wall_s": round(evaluated.seconds, 1),
                                       "images_per_s_wall": round(test_frames / evaluated.seconds, 2),
                                       "miou_line": next(iter(log_lines(evaluated, r"(?i)miou")), "not logged")}
        ctx.check("evaluate: finishes", evaluated.ok, evaluated.describe())
        ctx.set(evaluate=eval_fields)
    evaluate_ips = ctx.fields["evaluate"]["images_per_s_wall"] if isinstance(ctx.fields["evaluate"], dict) else None
    ctx.summary = f"predict {fields['images_per_s_wall']:.1f} img/s (wall)" + (
        f", evaluate {evaluate_ips:.1f} img/s (wall)" if evaluate_ips is not None else ", evaluate not available")
