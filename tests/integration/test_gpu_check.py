"""The prepared GPU check (python -m benchmarks.gpu_check): its CPU smoke run writes a complete, well-formed report.

The check's parts run the product's own commands (synth, train, torchrun, predict) and the
trainer's step through the harness; here they run on the CPU at tiny sizes. No timing
thresholds: only that every part ends ok / skipped / failed with the fields it promises.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

# benchmarks/ is not an installed package: import it from the repository root, however pytest was started.
REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.gpu_check.parts import FAIL_ENV, NO_CUDA, PARTS  # noqa: E402
from benchmarks.gpu_check.proc import run_command  # noqa: E402

pytestmark = pytest.mark.slow

PART_FIELDS = {
    "env": {"torch", "cuda_runtime", "cudnn", "nccl", "gpu_name", "gpu_memory_mib", "driver", "matmul_bf16", "copy"},
    "demo": {"float16", "resume", "bf16_channels_last_compile", "checks"},
    "step": {"model", "matmul_peak_tflops", "gflop_per_image", "variants"},
    "e2e": {"model", "runs", "fewest_threads_under_5pct_wait", "on_device_vs_pinned", "steps_per_epoch", "checks"},
    "telemetry": {"samples", "origin", "process_mb", "reserved_mb", "non_torch_mb", "tensorboard", "checks"},
    "torchrun": {"sync_bn", "two_ranks_one_device", "checks"},
    "predict": {"predict", "evaluate", "checks"},
    "zoo": {"size", "batch", "settings", "pairs", "matmul_peak_tflops"},
}
STEP_MEASURED = {"images_per_s", "achieved_tflop_s", "fraction_of_matmul_peak", "peak_memory_allocated_mib"}


def run_check(out: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The check as a user runs it. The budget is generous: it is a cap, and a shared CI machine can be slow."""
    child_env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
                     OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **(env or {}))
    argv = [sys.executable, "-m", "benchmarks.gpu_check", "--cpu-smoke", "--out", str(out),
            "--budget-s", "1000", *args]
    return subprocess.run(argv, env=child_env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=1200,
                          check=False)


def load_report(out: Path) -> dict:
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["format"] == "dist_seg.gpu_check" and report["mode"] == "cpu-smoke" and report["finished"]
    assert list(report["parts"]) == [p.name for p in PARTS], "every part is listed, in order"
    for name, part in report["parts"].items():
        assert part["status"] in ("ok", "skipped", "failed"), (name, part["status"])
        assert part["seconds"] is not None or part["status"] == "skipped"
    return report


def test_cpu_smoke_runs_every_part_and_writes_a_complete_report(tmp_path):
    done = run_check(tmp_path / "out")
    report = load_report(tmp_path / "out")
    failures = {n: (p["error"], p["traceback"]) for n, p in report["parts"].items() if p["status"] != "ok"}
    assert done.returncode == 0 and not failures, (done.stdout[-3000:], failures)
    parts = report["parts"]
    for name, expected in PART_FIELDS.items():
        assert expected <= parts[name]["fields"].keys(), (name, sorted(parts[name]["fields"]))
        assert all(v == "ok" for v in parts[name]["fields"].get("checks", {}).values()), parts[name]["fields"]

    env = parts["env"]["fields"]
    assert env["gpu_name"] == NO_CUDA and env["nccl"] == NO_CUDA
    assert env["matmul_bf16"]["tflop_s_median"] > 0 and env["copy"]["gb_s"] > 0

    demo = parts["demo"]["fields"]
    assert demo["float16"]["train_loss_last"] < demo["float16"]["train_loss_first"]
    assert demo["float16"]["checkpoint"]["loads_weights_only"] is True
    assert demo["float16"]["checkpoint"]["grad_scaler_scale"] == "GradScaler disabled"  # float16 AMP is off on a CPU
    assert demo["resume"]["epochs"] == demo["float16"]["epochs"] + 1
    assert demo["resume"]["checkpoint"]["global_step"] > demo["float16"]["checkpoint"]["global_step"]
    assert "autocast bfloat16" in demo["bf16_channels_last_compile"]["runtime"]

    variants = parts["step"]["fields"]["variants"]
    for name in ("eager fp32", "channels_last", "amp bf16"):
        assert STEP_MEASURED <= variants[name].keys() and variants[name]["images_per_s"] > 0
    assert variants["compile"].startswith("skipped")

    e2e = parts["e2e"]["fields"]
    runs = e2e["runs"]
    assert list(runs) == ["1 thread", "2 threads", "on-device cache"]
    assert all(0.0 <= r["data_wait_frac_median"] <= 1.0 and r["images_per_s"] > 0 for r in runs.values())
    assert e2e["checks"]["on-device cache: ends inside its first epoch (one mid-epoch checkpoint)"] == "ok"
    assert e2e["on_device_vs_pinned"]["ratio"] > 0 and e2e["on_device_vs_pinned"]["best_pinned"] in runs

    telemetry = parts["telemetry"]["fields"]
    assert telemetry["samples"] > 0 and telemetry["origin"] == ["source none"]
    assert telemetry["process_mb"] == NO_CUDA

    torchrun = parts["torchrun"]["fields"]["sync_bn"]
    assert "(gloo)" in torchrun["rank_line"] and "keeping per-rank BatchNorm" in torchrun["sync_bn"]
    assert torchrun["sync_bn_and_compile"].startswith("not asked")
    # gloo lets two ranks share the CPU; on a GPU this field holds NCCL's answer.
    assert parts["torchrun"]["fields"]["two_ranks_one_device"]["outcome"] == "allowed: both ranks reduced"
    predict = parts["predict"]["fields"]["predict"]
    assert predict["frames"] > 0 and predict["images_per_s_wall"] > 0
    zoo = parts["zoo"]["fields"]["pairs"]
    assert list(zoo) == ["deeplabv3plus-resnet18", "smp-Segformer-mit_b0"]  # SMP: the test extra has the zoo extra
    assert all(row["images_per_s"] > 0 and row["train_gflop_per_image"] > 0 and row["params_m"] > 0
               for row in zoo.values()), zoo

    # The plan: this run's, with each part's estimate beside its seconds, and the GPU check's, which must fit.
    assert report["plan"]["sizes"] == "cpu-smoke" and set(report["plan"]["parts"]) == set(parts)
    assert all(part["planned_s"] > 0 for part in parts.values())
    assert report["gpu_plan"]["sizes"] == "gpu" and report["gpu_plan"]["fits"] is True
    assert report["gpu_plan"]["budget_s"] <= 480

    markdown = (tmp_path / "out" / "gpu_check.md").read_text()
    assert markdown.startswith("# dist_seg GPU check") and "the GPU check's plan: ~" in markdown
    assert all(f"## {p.name}: {p.title} (ok)" in markdown for p in PARTS)
    log = (tmp_path / "out" / "gpu_check.log").read_text()
    assert all(f"part {p.name}: ok in" in log for p in PARTS)
    assert "plan (cpu-smoke sizes)" in log and "GPU plan (gpu sizes)" in log and ", fits" in log


def test_a_failing_part_is_reported_and_the_next_part_runs(tmp_path):
    done = run_check(tmp_path / "out", "--parts", "env,step", env={FAIL_ENV: "env"})
    assert done.returncode == 1, done.stdout[-3000:]
    parts = load_report(tmp_path / "out")["parts"]
    assert parts["env"]["status"] == "failed" and "forced failure" in parts["env"]["error"]
    assert "Traceback" in parts["env"]["traceback"] and "RuntimeError" in parts["env"]["traceback"]
    step = parts["step"]
    assert step["status"] == "ok", (step["error"], step["traceback"])
    assert step["fields"]["matmul_peak_note"].startswith("measured here")
    assert STEP_MEASURED <= step["fields"]["variants"]["eager fp32"].keys()
    assert all(parts[name]["status"] == "skipped" and "not selected" in parts[name]["summary"]
               for name in ("demo", "e2e", "telemetry", "torchrun", "predict", "zoo"))
    markdown = (tmp_path / "out" / "gpu_check.md").read_text()
    assert "## env: " in markdown and "(failed)" in markdown and "forced failure" in markdown


def test_a_part_that_needs_another_parts_output_is_skipped_with_the_reason(tmp_path):
    done = run_check(tmp_path / "out", "--parts", "telemetry")
    assert done.returncode == 0, done.stdout[-3000:]
    telemetry = load_report(tmp_path / "out")["parts"]["telemetry"]
    assert telemetry["status"] == "skipped" and "e2e" in telemetry["summary"]


def test_unknown_part_names_are_refused_before_any_work(tmp_path):
    done = run_check(tmp_path / "out", "--parts", "env,stepp")
    assert done.returncode == 2 and "stepp" in done.stderr and "step" in done.stderr
    assert not (tmp_path / "out" / "gpu_check.json").exists()


def test_the_check_starts_by_its_script_path_too(tmp_path):
    # python benchmarks/gpu_check.py, like benchmarks/run.py, from any folder: the same parser, the same check.
    done = subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks" / "gpu_check.py"), "--cpu-smoke",
                           "--parts", "zoo,stepp", "--out", str(tmp_path / "out")], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2 and "unknown part(s) stepp" in done.stderr, done.stderr
    assert not (tmp_path / "out" / "gpu_check.json").exists()


def test_a_command_past_its_deadline_is_killed_with_the_processes_it_started(tmp_path):
    # A grandchild in a session of its own, as torchrun starts its workers: killing the
    # command's process group alone would miss it.
    pid_file = tmp_path / "grandchild.pid"
    script = ("import subprocess, sys, time\n"
              "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'], start_new_session=True)\n"
              f"open({str(pid_file)!r}, 'w').write(str(p.pid))\n"
              "print('started', flush=True)\n"
              "time.sleep(120)\n")
    result = run_command([sys.executable, "-c", script], log_path=tmp_path / "cmd.log", timeout_s=5.0)
    assert result.timed_out and not result.ok and "started" in result.tail
    grandchild = int(pid_file.read_text())
    for _ in range(50):  # the kill is asynchronous; give the kernel a moment to reap
        if not _alive(grandchild):
            break
        time.sleep(0.1)
    assert not _alive(grandchild)
    assert "killed at the deadline" in (tmp_path / "cmd.log").read_text()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"  # a zombie is dead, only not yet reaped by its (init) parent
