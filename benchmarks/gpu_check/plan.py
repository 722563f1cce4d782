"""The GPU check's plan: what each part runs and how long it should take, said before anything runs.

A part's expected seconds are its work (commands started, epochs, steps, frames) times a
per-unit cost. The GPU costs are conservative estimates for an H100-class card (the production
step's FLOPs at a third of the bf16 peak, a compile at 1.5 minutes), not measurements: the
check has not met a GPU yet. The report keeps each part's planned seconds beside its actual
ones, so the first real run shows where the estimates were wrong (replace them then).

``--cpu-smoke`` prints the GPU plan too and fails when it does not fit the default budget:
each part's required work within its share, the whole within the budget, and the e2e runs
ending inside their first epoch (no epoch-end checkpoint of the production model). Work
marked optional runs only when the parts before it left time over.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .parts import PARTS, CheckSizes

DEMO_HELD_OUT_SEQUENCES = 2  # configs/demo.yaml validates on one sequence and tests on another


@dataclass(frozen=True)
class Costs:
    """Seconds per unit of work on one kind of machine."""

    command_start_s: float  # a product command: interpreter, torch import, device init, config and data checks
    torchrun_start_s: float  # the same under torchrun: launcher, rendezvous, process group
    worker_start_s: float  # a measuring worker: interpreter, torch import, device init
    env_measure_s: float  # the matmul peak and the copy bandwidth
    demo_compile_s: float  # the demo model's compilations (train and eval graphs)
    demo_epoch_s: float  # a demo epoch: steps, precise BN, validation, checkpoint
    step_fp32_s: float  # one production-model step in float32 (TF32 on a GPU)
    step_bf16_s: float  # the same under bf16 autocast
    step_compile_s: float  # a compiled variant's first steps (compilation)
    flop_count_s: float  # FlopCounterMode over one forward and backward
    e2e_checkpoint_s: float  # writing the production model's one mid-epoch checkpoint
    synth_frame_s: float  # drawing one synthetic frame at the e2e source size
    cache_frame_s: float  # decoding and resizing one frame into the cache
    predict_frame_s: float  # predict: decode, forward, three PNG writes
    evaluate_frame_s: float  # evaluate at native size


GPU_COSTS = Costs(command_start_s=12.0, torchrun_start_s=18.0, worker_start_s=8.0, env_measure_s=3.0,
                  demo_compile_s=75.0, demo_epoch_s=4.0, step_fp32_s=0.15, step_bf16_s=0.08, step_compile_s=90.0,
                  flop_count_s=2.0, e2e_checkpoint_s=3.0, synth_frame_s=0.015, cache_frame_s=0.01,
                  predict_frame_s=0.02, evaluate_frame_s=0.05)
# This project's 2-core CPUs at the smoke sizes (32x32 images, ResNet-18), measured loosely (a step
# here includes building the model for its variant, which dominates at these sizes).
SMOKE_COSTS = Costs(command_start_s=6.0, torchrun_start_s=9.0, worker_start_s=5.0, env_measure_s=1.0,
                    demo_compile_s=0.0, demo_epoch_s=3.0, step_fp32_s=1.0, step_bf16_s=1.5, step_compile_s=300.0,
                    flop_count_s=2.0, e2e_checkpoint_s=0.2, synth_frame_s=0.01, cache_frame_s=0.005,
                    predict_frame_s=0.01, evaluate_frame_s=0.02)
COSTS = {"gpu": GPU_COSTS, "cpu-smoke": SMOKE_COSTS}


@dataclass(frozen=True)
class Work:
    """One item of a part's plan."""

    what: str
    seconds: float
    optional: bool = False  # runs only if the budget has room when the part gets to it


@dataclass(frozen=True)
class PartPlan:
    """What one part will do, and its share of the budget."""

    name: str
    share_s: float
    work: tuple[Work, ...]

    @property
    def required_s(self) -> float:
        return sum(w.seconds for w in self.work if not w.optional)

    def describe(self) -> str:
        items = "; ".join(f"{w.what} ~{w.seconds:.0f} s" + (" (if time is left)" if w.optional else "")
                          for w in self.work)
        return f"{self.name}: ~{self.required_s:.0f} s of its {self.share_s:.0f} s ({items})"


@dataclass(frozen=True)
class Plan:
    """The whole check's plan for one set of sizes and a budget."""

    sizes: str
    budget_s: float
    parts: tuple[PartPlan, ...]
    problems: tuple[str, ...]  # why it does not fit; empty when it does

    @property
    def required_s(self) -> float:
        return sum(p.required_s for p in self.parts)

    @property
    def fits(self) -> bool:
        return not self.problems

    def lines(self) -> list[str]:
        verdict = "fits" if self.fits else "DOES NOT FIT: " + "; ".join(self.problems)
        return [f"plan ({self.sizes} sizes): ~{self.required_s:.0f} s of the {self.budget_s:.0f} s budget, {verdict}",
                *(f"  {p.describe()}" for p in self.parts)]

    def to_json(self) -> dict:
        return {"sizes": self.sizes, "budget_s": self.budget_s, "required_s": round(self.required_s, 1),
                "fits": self.fits, "problems": list(self.problems),
                "parts": {p.name: {"share_s": round(p.share_s, 1), "required_s": round(p.required_s, 1),
                                   "work": [asdict(w) for w in p.work]} for p in self.parts}}


def demo_steps_per_epoch(sizes: CheckSizes) -> int:
    sequences, frames, _size = sizes.demo_data
    return (sequences - DEMO_HELD_OUT_SEQUENCES) * frames // sizes.demo_batch


def e2e_steps(sizes: CheckSizes) -> int:
    """Optimizer steps of one e2e run: a warm-up window, then the timed windows."""
    return sizes.e2e_log_interval * (sizes.e2e_windows + 1)


def e2e_steps_per_epoch(sizes: CheckSizes) -> int:
    sequences, frames, _size = sizes.e2e_data
    return sequences * frames // sizes.e2e_model.batch_size  # every e2e sequence trains


def _step_costs(sizes: CheckSizes, costs: Costs) -> tuple[Work, ...]:
    from .measure import MEASURE_ORDER, STEP_VARIANTS  # measure imports torch; the plan itself does not need it

    by_name = {v.name: v for v in STEP_VARIANTS}
    steps = sizes.step_warmup + (sizes.step_steps if sizes.target == "cuda" else 0) + sizes.step_repeats * sizes.step_steps
    work = [Work("worker start and FLOP count", costs.worker_start_s + costs.flop_count_s)]
    for name in MEASURE_ORDER:
        variant = by_name[name]
        if variant.compile and not sizes.step_compile:
            continue
        per_step = costs.step_bf16_s if variant.amp_dtype is not None else costs.step_fp32_s
        seconds = steps * per_step + (costs.step_compile_s if variant.compile else 0.0)
        # Compile alone adds nothing the production setting (measured first) does not show, at a compile's cost.
        work.append(Work(f"{name}: {steps} steps", seconds, optional=name == "compile"))
    return tuple(work)


def part_work(sizes: CheckSizes, costs: Costs) -> dict[str, tuple[Work, ...]]:
    """Each part's work at ``sizes``, with its expected seconds."""
    demo_epoch = costs.demo_epoch_s
    demo_steps = demo_steps_per_epoch(sizes)
    e2e_sequences, e2e_frames, _ = sizes.e2e_data
    e2e_frames_all = e2e_sequences * e2e_frames
    demo_sequences, demo_frames, _ = sizes.demo_data
    test_frames = demo_frames  # one test sequence
    runs = len(sizes.e2e_workers) + 1  # pinned thread counts, then the on-device cache
    e2e_step = costs.step_bf16_s if sizes.e2e_amp_dtype else costs.step_fp32_s
    e2e_run = costs.command_start_s + e2e_steps(sizes) * e2e_step + costs.e2e_checkpoint_s
    return {
        "env": (Work("worker start, matmul peak, copy bandwidth", costs.worker_start_s + costs.env_measure_s),),
        "demo": (
            Work(f"bf16 + channels-last{' + compile' if sizes.demo_compile else ''}: {sizes.demo_fast_epochs} "
                 f"epochs x {demo_steps} steps",
                 costs.command_start_s + (costs.demo_compile_s if sizes.demo_compile else 0.0)
                 + sizes.demo_fast_epochs * demo_epoch),
            Work(f"float16 + GradScaler: {sizes.demo_epochs} epochs", costs.command_start_s + sizes.demo_epochs * demo_epoch),
            Work("resume: 1 more epoch", costs.command_start_s + demo_epoch),
        ),
        "step": _step_costs(sizes, costs),
        "e2e": (
            Work(f"draw {e2e_frames_all} frames and cache them",
                 costs.command_start_s + e2e_frames_all * (costs.synth_frame_s + costs.cache_frame_s)),
            Work(f"{runs} runs (pinned {', '.join(map(str, sizes.e2e_workers))} threads, on-device cache) of "
                 f"{e2e_steps(sizes)} steps", runs * e2e_run),
        ),
        "telemetry": (Work("read the e2e run's memory log and TensorBoard files", 1.0),),
        "torchrun": (
            *(Work(f"torchrun {label}: 1 epoch", costs.torchrun_start_s + demo_epoch) for label, _ in sizes.torchrun_runs),
            Work("two ranks on one device: may they share it?", costs.torchrun_start_s + 2.0),
        ),
        "predict": (
            Work(f"predict {demo_sequences * demo_frames} frames",
                 costs.command_start_s + demo_sequences * demo_frames * costs.predict_frame_s),
            Work(f"evaluate {test_frames} test frames", costs.command_start_s + test_frames * costs.evaluate_frame_s),
        ),
        "zoo": (
            Work("worker start", costs.worker_start_s),
            # A pair's step costs at most the production DeepLabV3+ ResNet-50's at the same size (~1/3 to 1x).
            Work(f"{len(sizes.zoo_pairs)} pairs x {sizes.step_warmup + sizes.zoo_steps} bf16 steps, model build "
                 "and FLOP count", len(sizes.zoo_pairs) * (costs.flop_count_s + 1.0 + (sizes.step_warmup + sizes.zoo_steps)
                                                          * costs.step_bf16_s)),
        ),
    }


def make_plan(sizes: CheckSizes, budget_s: float, selected: set[str] | None = None) -> Plan:
    """The plan of the selected parts (all by default) at ``sizes`` within ``budget_s``, and what does not fit."""
    specs = [spec for spec in PARTS if selected is None or spec.name in selected]
    shares = sum(spec.share for spec in specs)
    work = part_work(sizes, COSTS[sizes.name])
    parts = tuple(PartPlan(spec.name, budget_s * spec.share / shares, work[spec.name]) for spec in specs)
    problems = [f"{p.name} needs ~{p.required_s:.0f} s, its share is {p.share_s:.0f} s"
                for p in parts if p.required_s > p.share_s]
    total = sum(p.required_s for p in parts)
    if total > budget_s:
        problems.append(f"all parts need ~{total:.0f} s, the budget is {budget_s:.0f} s")
    if any(p.name == "e2e" for p in parts) and e2e_steps(sizes) >= e2e_steps_per_epoch(sizes):
        problems.append(f"e2e runs {e2e_steps(sizes)} steps but an epoch has {e2e_steps_per_epoch(sizes)}: "
                        "a run must end inside its first epoch")
    return Plan(sizes.name, budget_s, parts, tuple(problems))
