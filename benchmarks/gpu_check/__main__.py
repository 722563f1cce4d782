"""One prepared GPU check: ``python -m benchmarks.gpu_check [--out DIR] [--budget-s 480] [--cpu-smoke] [--parts a,b]``.

Runs, in order and each time-boxed, everything only a GPU can show: the environment and the
card's measured peaks (env), demo training with bf16 + channels-last + compile, then float16 +
GradScaler and a resume (demo), the step suite on the production model with a sync-free
proof and MFU (step), real training through the full cache with pinned gather threads and
with the on-device cache (e2e), the VRAM sampler on the real driver (telemetry), torchrun
with NCCL, SyncBatchNorm and compile, and whether two ranks may share the GPU (torchrun),
predict and evaluate (predict), and the model zoo's pairs at the production size (zoo). A
failing part is reported and the next one runs. The plan (each part's work and expected
seconds, :mod:`.plan`) is printed before anything runs.

``gpu_check.json`` and ``gpu_check.md`` are rewritten in the output folder (``$OUT`` when
set, else benchmarks/out/gpu_check) after every part, so a check killed halfway still leaves
its report; ``gpu_check.log`` there holds every progress line. ``--cpu-smoke`` runs the same
parts on a CPU at tiny sizes (seconds each): CUDA-only items read "skipped: no CUDA"; it also
prints the GPU check's plan and exits 1 when that plan does not fit the default budget.
Needs only PyTorch (with torchvision) and the project on PYTHONPATH; optional packages
(tensorboard, pynvml; segmentation-models-pytorch and timm for the zoo part's SMP pairs) are used
when importable and reported when missing.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from .parts import (
    GPU_SIZES,
    PARTS,
    SMOKE_SIZES,
    Outcome,
    PartContext,
    PartSpec,
    execute,
    write_state,
)
from .plan import make_plan
from .proc import REPO_ROOT, run_command
from .report import PartReport, Report

DEFAULT_BUDGET_S = 480.0
# Seconds a worker may run past its part's deadline (its own imports, writing the result) before it is killed.
WORKER_GRACE_S = 15.0
# A part offered less than this is skipped: it could not even start its first command.
MIN_PART_S = 5.0
# import name -> distribution name of what the check and the product use besides the standard library.
PACKAGES = {"torch": "torch", "torchvision": "torchvision", "numpy": "numpy", "yaml": "pyyaml", "PIL": "pillow",
            "psutil": "psutil", "tqdm": "tqdm", "tensorboard": "tensorboard", "pynvml": "nvidia-ml-py",
            "segmentation_models_pytorch": "segmentation-models-pytorch", "timm": "timm"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.split("\n\n")[0],
                                     epilog="parts: " + ", ".join(f"{p.name} ({p.title})" for p in PARTS))
    parser.add_argument("--out", type=Path, default=None,
                        help="report folder (default: $OUT when set, else benchmarks/out/gpu_check)")
    parser.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S,
                        help=f"total seconds for all parts, shared out by weight (default {DEFAULT_BUDGET_S:.0f})")
    parser.add_argument("--cpu-smoke", action="store_true",
                        help="run every part on the CPU at tiny sizes (checks the plumbing; no GPU needed)")
    parser.add_argument("--parts", default=",".join(p.name for p in PARTS),
                        help="comma-separated parts to run, in the fixed order (default: all)")
    parser.add_argument("--work", type=Path, default=None,
                        help="scratch folder for datasets and runs (default: a temporary folder, deleted at the end)")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.parts.split(",") if n.strip()]
    unknown = [n for n in names if n not in {p.name for p in PARTS}]
    if unknown or not names:
        parser.error(f"--parts: unknown part(s) {', '.join(unknown) or '(none given)'}; "
                     f"choose from {', '.join(p.name for p in PARTS)}")
    if args.budget_s <= 0:
        parser.error("--budget-s must be positive")
    args.selected = set(names)
    return args


def probe_packages() -> dict[str, str]:
    """Version of each package the check and the product use, or "missing" (nothing is imported)."""
    found = {}
    for module, distribution in PACKAGES.items():
        if importlib.util.find_spec(module) is None:
            found[module] = "missing"
            continue
        try:
            found[module] = importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            found[module] = "present"
    return found


class Check:
    """One run of the check: the report, the budget and the progress log."""

    def __init__(self, args: argparse.Namespace, command: list[str], out: Path, work: Path) -> None:
        self.args, self.out, self.work = args, out, work
        self.sizes = SMOKE_SIZES if args.cpu_smoke else GPU_SIZES
        self.start = time.time()
        self.end = self.start + args.budget_s
        self.shared: dict = {}
        self.report = Report(mode="cpu-smoke" if args.cpu_smoke else "cuda", budget_s=args.budget_s,
                             command=command,
                             parts=[PartReport(p.name, p.title) for p in PARTS], packages=probe_packages())
        self.log_path = out / "gpu_check.log"

    def log(self, message: str) -> None:
        line = f"[gpu_check +{time.time() - self.start:5.0f}s] {message}"
        print(line, flush=True)
        with open(self.log_path, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")

    def save(self) -> None:
        self.report.elapsed_s = time.time() - self.start
        self.report.write(self.out)

    def run(self) -> int:
        missing = [name for name, version in self.report.packages.items() if version == "missing"]
        self.log(f"{self.report.mode} check, budget {self.args.budget_s:.0f} s, report in {self.out}, work in "
                 f"{self.work}" + (f"; missing packages: {', '.join(missing)}" if missing else ""))
        selected = [spec for spec in PARTS if spec.name in self.args.selected]
        # The plan up front: each part's work, its expected seconds and its share of the budget
        # (a part that ends early passes its rest on to the parts after it).
        plan = make_plan(self.sizes, self.args.budget_s, self.args.selected)
        self.report.plan = plan.to_json()
        for line in plan.lines():
            self.log(line)
        for part_plan in plan.parts:
            self.report.part(part_plan.name).planned_s = round(part_plan.required_s, 1)
        if self.args.cpu_smoke:
            # What a lent GPU will run must fit its budget; this is the one place that can say so before it is lent.
            gpu_plan = make_plan(GPU_SIZES, DEFAULT_BUDGET_S)
            self.report.gpu_plan = gpu_plan.to_json()
            for line in gpu_plan.lines():
                self.log(f"GPU {line}")
        for spec in PARTS:
            if spec.name not in self.args.selected:
                part = self.report.part(spec.name)
                part.status, part.summary = "skipped", "skipped: not selected (--parts)"
        self.save()
        for index, spec in enumerate(selected):
            # Each part gets its weight's share of what is left, so time a part saves goes to the ones after it.
            left = self.end - time.time()
            weights = sum(s.share for s in selected[index:])
            budget = left * spec.share / weights
            part = self.report.part(spec.name)
            part.budget_s = round(budget, 1)
            if budget < MIN_PART_S:
                part.status, part.summary = "skipped", f"skipped: budget spent ({left:.0f} s left in all)"
                self.log(f"part {spec.name}: {part.summary}")
                self.save()
                continue
            part.status = "running"
            self.save()
            self.log(f"part {spec.name}: {spec.title} (up to {budget:.0f} s)")
            started = time.time()
            outcome = self.run_isolated(spec, budget) if spec.isolated else self.run_here(spec, budget)
            self.apply(part, outcome, time.time() - started)
            self.log(f"part {spec.name}: {part.status} in {part.seconds:.0f} s"
                     + (f" | {part.summary}" if part.summary else "") + (f" | {part.error}" if part.error else ""))
        self.report.finished = True
        self.save()
        failed = [p.name for p in self.report.parts if p.status == "failed"]
        if self.report.gpu_plan is not None and not self.report.gpu_plan["fits"]:
            failed.append("the GPU plan (does not fit its budget)")
        self.log(f"done in {time.time() - self.start:.0f} s: " + (f"FAILED {', '.join(failed)}" if failed else
                                                                 "no part failed") + f"; report {self.out}")
        return 1 if failed else 0

    def context(self, spec: PartSpec, budget: float) -> PartContext:
        return PartContext(spec.name, self.sizes, self.work, time.time() + budget, self.shared, log=self.log)

    def run_here(self, spec: PartSpec, budget: float) -> Outcome:
        """A part that only starts time-boxed commands runs in this process; its fields are saved as they come."""
        part = self.report.part(spec.name)

        def on_change(ctx: PartContext) -> None:
            part.fields, part.summary = ctx.fields, ctx.summary
            self.save()

        ctx = self.context(spec, budget)
        ctx.on_change = on_change
        return execute(spec, ctx)

    def run_isolated(self, spec: PartSpec, budget: float) -> Outcome:
        """A part that measures in-process runs in a worker, killed if it outlives its deadline."""
        folder = self.work / "workers"
        folder.mkdir(parents=True, exist_ok=True)
        state, result_path = folder / f"{spec.name}.state.json", folder / f"{spec.name}.result.json"
        result_path.unlink(missing_ok=True)
        write_state(state, self.context(spec, budget))
        command = run_command([sys.executable, "-m", "benchmarks.gpu_check.parts", spec.name, str(state),
                               str(result_path)], log_path=folder / f"{spec.name}.log",
                              timeout_s=budget + WORKER_GRACE_S, echo=self.log)
        saved = json.loads(result_path.read_text()) if result_path.is_file() else None
        if saved is not None and saved["status"] != "running" and command.ok:
            return Outcome(**saved)
        fields, summary = (saved["fields"], saved["summary"]) if saved else ({}, "")
        why = (f"timed out after {command.seconds:.0f} s (budget {budget:.0f} s); fields measured until then are kept"
               if command.timed_out else f"worker exited {command.returncode} before reporting")
        return Outcome("failed", fields, summary, saved["shared"] if saved else self.shared, why, command.tail)

    def apply(self, part: PartReport, outcome: Outcome, seconds: float) -> None:
        self.shared.update(outcome.shared)
        part.status, part.fields, part.summary = outcome.status, outcome.fields, outcome.summary
        part.error, part.traceback, part.seconds = outcome.error, outcome.traceback, round(seconds, 1)
        self.save()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    default_out = os.environ.get("OUT") or REPO_ROOT / "benchmarks" / "out" / "gpu_check"
    out = (args.out or Path(default_out)).resolve()
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.log").unlink(missing_ok=True)
    # Scratch stays outside the report folder: checkpoints of hundreds of MB must not travel back with $OUT.
    work = (args.work or Path(tempfile.mkdtemp(prefix="dist_seg_gpu_check_"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    try:
        command = ["-m", "benchmarks.gpu_check", *(sys.argv[1:] if argv is None else argv)]
        return Check(args, command, out, work).run()
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
