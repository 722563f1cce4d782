"""The GPU check's parts: their table, sizes, the context a part runs with, and the worker entry point.

A part is a function ``part(ctx: PartContext) -> None`` that records what it measured with
``ctx.set(...)`` and what it verified with ``ctx.check(...)``; it raises :class:`Skip` when it
cannot apply (an artifact of another part is missing). Parts that measure inside the Python
process (``isolated``: they create a CUDA context and fill the allocator) run in a worker
child, ``python -m benchmarks.gpu_check.parts PART STATE RESULT``: the check's own process
then never holds GPU memory that would distort later parts' figures, a CUDA error cannot
poison the parts after it, and a hang is ended by killing the worker at its deadline. The
other parts only start product commands (each time-boxed) and read their outputs.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dist_seg import atomic

from ..sizes import ZOO_PAIRS, ModelSpec
from .proc import CommandResult, child_env, run_command

NO_CUDA = "skipped: no CUDA"
# Comma-separated part names that raise at their start: lets tests (and anyone checking the
# report plumbing) see a failing part reported while the next one runs.
FAIL_ENV = "DIST_SEG_GPU_CHECK_FAIL"
TRACEBACK_LINES = 25


@dataclass(frozen=True)
class PartSpec:
    """One row of the check: name, title, share of the total budget, where its function lives."""

    name: str
    title: str
    share: float
    function: str  # "module:function" under benchmarks/
    isolated: bool = False  # run in a worker child process


PARTS: tuple[PartSpec, ...] = (
    PartSpec("env", "Environment, matmul peak, copy bandwidth", 0.025, "measure:env", isolated=True),
    PartSpec("demo", "Demo training: bf16 + channels-last + compile, float16 + GradScaler, resume", 0.29,
             "runs:demo"),
    PartSpec("step", "Step suite on the production model", 0.25, "measure:step", isolated=True),
    PartSpec("e2e", "End to end: full cache, pinned gather threads vs on-device cache", 0.19, "runs:e2e"),
    PartSpec("telemetry", "VRAM sampler on the real driver", 0.012, "runs:telemetry"),
    PartSpec("torchrun", "torchrun with NCCL, SyncBatchNorm + compile, two ranks on one GPU", 0.093, "runs:torchrun"),
    PartSpec("predict", "Predict and evaluate", 0.065, "runs:predict"),
    PartSpec("zoo", "Model zoo pairs: train img/s, MFU, peak memory", 0.075, "measure:zoo", isolated=True),
)


@dataclass(frozen=True)
class CheckSizes:
    """Every size of the check for one mode: the GPU check, or the CPU smoke run of its plumbing."""

    name: str
    target: str  # backend.target of every run
    matmul_n: int
    matmul_repeats: int
    copy_mb: int
    demo_data: tuple[int, int, tuple[int, int]]  # sequences, frames, (H, W)
    demo_overrides: tuple[str, ...]  # --set items on top of configs/demo.yaml
    demo_batch: int
    demo_epochs: int  # float16 run; the resume trains one more
    demo_fast_epochs: int  # bf16 + channels-last (+ compile) run, the first of the part
    demo_compile: bool
    step_model: ModelSpec
    step_warmup: int
    step_steps: int
    step_repeats: int
    step_compile: bool
    compile_estimate_s: float  # a compiled step variant's warm-up, before one was measured
    e2e_data: tuple[int, int, tuple[int, int]]  # enough frames that every run ends inside its first epoch
    e2e_model: ModelSpec
    e2e_amp_dtype: str | None  # None: float32 (the smoke run; CPU bf16 is emulated and slow)
    e2e_workers: tuple[int, ...]
    e2e_log_interval: int
    e2e_windows: int  # timed windows after the dropped warm-up window
    dist_backend: str
    # torchrun runs: label and extra --set items (a process start under torchrun costs more than
    # the training, so NCCL, DDP and SyncBatchNorm are checked in one run).
    torchrun_runs: tuple[tuple[str, tuple[str, ...]], ...]
    torchrun_compile: bool  # ask for compile, so the report shows what SyncBatchNorm makes of it
    predict_batch: int
    zoo_model: ModelSpec  # size and batch of the zoo pairs' steps (the backbone is each pair's own)
    zoo_pairs: tuple[tuple[str, str | None, str], ...]  # (model.type, model.arch, backbone / encoder)
    zoo_steps: int  # timed steps per pair, after step_warmup


GPU_SIZES = CheckSizes(
    name="gpu", target="cuda", matmul_n=8192, matmul_repeats=5, copy_mb=1024,
    demo_data=(8, 24, (120, 160)), demo_overrides=(), demo_batch=8, demo_epochs=3, demo_fast_epochs=2,
    demo_compile=True,
    step_model=ModelSpec("resnet50", (512, 512), 16), step_warmup=3, step_steps=8, step_repeats=3,
    step_compile=True, compile_estimate_s=90.0,
    # Source frames at 128x128 (drawing 400 takes seconds), cached and served at 512x512: 25 batches
    # of 16 per epoch, so the 24 steps of a run end inside the first epoch.
    e2e_data=(4, 100, (128, 128)), e2e_model=ModelSpec("resnet50", (512, 512), 16), e2e_amp_dtype="bfloat16",
    e2e_workers=(1, 2, 4),
    e2e_log_interval=4, e2e_windows=5, dist_backend="nccl",
    # One run: NCCL, DDP and SyncBatchNorm together (its log says which failed, if one does).
    torchrun_runs=(("sync_bn", ("backend.sync_bn=true",)),), torchrun_compile=True, predict_batch=16,
    # The zoo table's pairs (benchmarks/zoo.py) at the production size; SMP pairs need the zoo extra installed.
    zoo_model=ModelSpec("per pair", (512, 512), 16), zoo_pairs=ZOO_PAIRS, zoo_steps=10,
)
# 32x32 images: this project's CPUs emulate bfloat16 (about 9x slower than float32), and the
# smoke run trains in bf16 as the GPU check does.
SMOKE_SIZES = CheckSizes(
    name="cpu-smoke", target="cpu", matmul_n=256, matmul_repeats=2, copy_mb=16,
    demo_data=(8, 3, (32, 32)),
    demo_overrides=("training.image_size=[32, 32]", "training.val_batch_size=4", "training.num_workers=1",
                    "training.log_interval=2"),
    demo_batch=4, demo_epochs=2, demo_fast_epochs=2, demo_compile=False,
    step_model=ModelSpec("resnet18", (32, 32), 2), step_warmup=1, step_steps=1, step_repeats=2,
    step_compile=False, compile_estimate_s=300.0,
    e2e_data=(2, 4, (32, 32)), e2e_model=ModelSpec("resnet18", (32, 32), 2), e2e_amp_dtype=None,
    e2e_workers=(1, 2),
    e2e_log_interval=1, e2e_windows=2, dist_backend="gloo",
    torchrun_runs=(("sync_bn", ("backend.sync_bn=true",)),), torchrun_compile=False, predict_batch=4,
    zoo_model=ModelSpec("per pair", (64, 64), 2), zoo_pairs=(("deeplabv3plus", None, "resnet18"),
                                                             ("smp", "Segformer", "mit_b0")), zoo_steps=1,
)
SIZES = {s.name: s for s in (GPU_SIZES, SMOKE_SIZES)}


class Skip(Exception):
    """The part does not apply here; the message says why."""


@dataclass
class PartContext:
    """What a part runs with, and what it has recorded so far."""

    name: str
    sizes: CheckSizes
    scratch: Path  # shared by all parts (datasets, caches)
    deadline: float  # time.time() by which the part must be done
    shared: dict[str, Any] = field(default_factory=dict)  # artifacts for later parts (checkpoint paths, ...)
    fields: dict[str, Any] = field(default_factory=dict)
    summary: str = ""
    failed_checks: list[str] = field(default_factory=list)
    tails: list[str] = field(default_factory=list)  # output tails of failed commands
    log: Callable[[str], None] = print
    on_change: Callable[[PartContext], None] = lambda _ctx: None

    @property
    def work(self) -> Path:
        """This part's own folder."""
        path = self.scratch / self.name
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def on_gpu(self) -> bool:
        return self.sizes.target == "cuda"

    def remaining(self) -> float:
        return self.deadline - time.time()

    def set(self, **values: Any) -> None:
        """Record fields (saved at once, so a part killed later still reports them)."""
        self.fields.update(values)
        self.on_change(self)

    def share(self, **values: Any) -> None:
        """Leave artifacts for later parts."""
        self.shared.update(values)
        self.on_change(self)

    def check(self, what: str, passed: bool, detail: str = "") -> bool:
        """Record a verification under ``fields["checks"]``; a failed one fails the part."""
        self.fields.setdefault("checks", {})[what] = "ok" if passed else f"FAILED{': ' + detail if detail else ''}"
        if not passed:
            self.failed_checks.append(what)
        self.on_change(self)
        return passed

    def command(self, label: str, argv: list[str], env: dict[str, str] | None = None,
                limit_s: float | None = None) -> CommandResult:
        """Run a product command, time-boxed by the part's deadline (and ``limit_s``); output in ``work/<label>.log``."""
        if self.remaining() <= 1:
            raise TimeoutError(f"no time left in the part's budget for {label}")
        timeout = self.remaining() if limit_s is None else min(limit_s, self.remaining())
        self.log(f"  {label}: {' '.join(argv[:4])} ... (up to {timeout:.0f} s)")
        result = run_command(argv, log_path=self.work / f"{label}.log", timeout_s=timeout, env=child_env(env))
        self.log(f"  {label}: {'timed out' if result.timed_out else f'exit {result.returncode}'} "
                 f"in {result.seconds:.1f} s")
        if not result.ok:
            self.tails.append(f"--- {result.describe()}\n{result.tail}")
        return result

    def python(self, label: str, module: str, *args: str, env: dict[str, str] | None = None) -> CommandResult:
        """``python -m module args...`` as :meth:`command`."""
        return self.command(label, [sys.executable, "-m", module, *args], env)


@dataclass
class Outcome:
    """How a part ended, in the form the report takes it."""

    status: str
    fields: dict[str, Any]
    summary: str
    shared: dict[str, Any]
    error: str | None = None
    traceback: str | None = None


def execute(spec: PartSpec, ctx: PartContext) -> Outcome:
    """Run one part and turn whatever happens into an :class:`Outcome` (never raises)."""
    try:
        if spec.name in _forced_failures():
            raise RuntimeError(f"forced failure of part {spec.name!r} ({FAIL_ENV}={os.environ[FAIL_ENV]})")
        module, function = spec.function.split(":")
        getattr(importlib.import_module(f"benchmarks.gpu_check.{module}"), function)(ctx)
    except Skip as exc:
        return Outcome("skipped", ctx.fields, f"skipped: {exc}", ctx.shared)
    except Exception as exc:  # a part's failure is reported, and the next part runs
        trace = traceback.format_exc().rstrip().splitlines()[-TRACEBACK_LINES:]
        return Outcome("failed", ctx.fields, ctx.summary, ctx.shared, f"{type(exc).__name__}: {exc}",
                       "\n".join(ctx.tails + trace))
    if ctx.failed_checks:
        return Outcome("failed", ctx.fields, ctx.summary, ctx.shared, f"failed checks: {'; '.join(ctx.failed_checks)}",
                       "\n".join(ctx.tails) or None)
    return Outcome("ok", ctx.fields, ctx.summary, ctx.shared)


def _forced_failures() -> set[str]:
    return {name.strip() for name in os.environ.get(FAIL_ENV, "").split(",") if name.strip()}


def part_spec(name: str) -> PartSpec:
    return next(spec for spec in PARTS if spec.name == name)


def write_state(path: Path, ctx: PartContext) -> None:
    """What a worker needs to rebuild ``ctx`` (the deadline is wall-clock time, valid across processes)."""
    atomic.write_json(path, {"name": ctx.name, "sizes": ctx.sizes.name, "scratch": str(ctx.scratch),
                             "deadline": ctx.deadline, "shared": ctx.shared})


def worker_main(argv: list[str]) -> int:
    """``python -m benchmarks.gpu_check.parts PART STATE RESULT``: run one part, saving its outcome as it goes."""
    name, state_path, result_path = argv
    state = json.loads(Path(state_path).read_text())
    result = Path(result_path)

    def save(ctx: PartContext) -> None:
        atomic.write_json(result, asdict(Outcome("running", ctx.fields, ctx.summary, ctx.shared)))

    ctx = PartContext(name, SIZES[state["sizes"]], Path(state["scratch"]), state["deadline"], state["shared"],
                      log=lambda message: print(message, flush=True), on_change=save)
    outcome = execute(part_spec(name), ctx)
    atomic.write_json(result, asdict(outcome))
    return 0


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:]))
