"""The GPU check's plan: the GPU sizes fit the default budget, and a plan that does not fit says why."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.gpu_check.__main__ import DEFAULT_BUDGET_S  # noqa: E402
from benchmarks.gpu_check.parts import GPU_SIZES, PARTS, SMOKE_SIZES  # noqa: E402
from benchmarks.gpu_check.plan import e2e_steps, e2e_steps_per_epoch, make_plan  # noqa: E402


def test_the_gpu_plan_fits_eight_minutes_with_every_part_inside_its_share():
    assert DEFAULT_BUDGET_S <= 8 * 60
    plan = make_plan(GPU_SIZES, DEFAULT_BUDGET_S)
    assert plan.fits, plan.problems
    assert [p.name for p in plan.parts] == [spec.name for spec in PARTS]
    assert all(0 < p.required_s <= p.share_s for p in plan.parts)
    assert plan.required_s <= DEFAULT_BUDGET_S
    assert abs(sum(p.share_s for p in plan.parts) - DEFAULT_BUDGET_S) < 1e-6


def test_e2e_runs_end_inside_their_first_epoch_at_both_sizes():
    for sizes in (GPU_SIZES, SMOKE_SIZES):
        assert e2e_steps(sizes) < e2e_steps_per_epoch(sizes), sizes.name


def test_the_compiled_production_setting_is_planned_before_the_single_switches():
    demo = make_plan(GPU_SIZES, DEFAULT_BUDGET_S).parts[1]
    assert demo.name == "demo" and "compile" in demo.work[0].what
    step = next(p for p in make_plan(GPU_SIZES, DEFAULT_BUDGET_S).parts if p.name == "step")
    names = [w.what for w in step.work]
    assert names[1].startswith("all: channels_last + amp bf16 + compile")
    # Compile alone is the one optional item: it runs only with time left over.
    assert [w.what.split(":")[0] for w in step.work if w.optional] == ["compile"]


def test_a_plan_over_budget_names_the_parts_and_the_total():
    plan = make_plan(GPU_SIZES, 200.0)
    assert not plan.fits
    assert any(p.startswith("demo needs") for p in plan.problems)
    assert any(p.startswith("all parts need") for p in plan.problems)
    assert "DOES NOT FIT" in plan.lines()[0]


def test_a_plan_whose_e2e_runs_would_cross_an_epoch_end_is_refused():
    sizes = dataclasses.replace(GPU_SIZES, e2e_data=(4, 48, (128, 128)))  # 12 batches of 16 per epoch
    plan = make_plan(sizes, DEFAULT_BUDGET_S)
    assert any("inside its first epoch" in p for p in plan.problems)


def test_the_plan_of_selected_parts_shares_the_whole_budget_among_them():
    plan = make_plan(GPU_SIZES, DEFAULT_BUDGET_S, {"env", "step"})
    assert [p.name for p in plan.parts] == ["env", "step"]
    assert abs(sum(p.share_s for p in plan.parts) - DEFAULT_BUDGET_S) < 1e-6
