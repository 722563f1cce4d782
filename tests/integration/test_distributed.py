"""Distributed training with real torchrun processes on CPU (gloo), loopback only.

Every run here is a real launcher (``python -m torch.distributed.run`` or a script under
launch/) with real worker processes, files and checkpoints. Runs are shared between
assertions through module-scoped fixtures, because each process pays for importing torch.

The dataset has 7 frames per sequence: 21 training frames (5 steps of global batch 4,
one frame dropped) and 7 validation frames, which no world size x batch size divides.
Signals and kills land at an exact training step through :mod:`gated_model`, never after
a sleep.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import torch
import yaml
from support.dist_eval_script import evaluate_checkpoint
from support.helpers import PYTHON, REPO_ROOT, SUPPORT_DIR, tiny_raw_config
from support.torchrun import free_port, launch_env
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from dist_seg.checkpoint_file import list_checkpoints
from dist_seg.config import apply_overrides, config_from_dict
from dist_seg.runtime.distributed import DistContext, restart_hazard
from dist_seg.synth import generate_dataset
from dist_seg.telemetry.tensorboard import rank_log_dir
from dist_seg.train.run import run_training

pytestmark = [pytest.mark.slow, pytest.mark.distributed]

# Generous bound on one launch on a loaded 2-core machine; only reached when something hangs.
LAUNCH_TIMEOUT_S = 240
VAL_FRAMES = 7
STEPS_PER_EPOCH = 5  # 21 frames // global batch 4 (2 ranks x 2, or 1 rank x 4)
EPOCHS = 3

# The run every equivalence test compares with: a model without BatchNorm, plain mean
# cross-entropy, no augmentation and float32 (bf16 autocast, which CPUs with avx512_bf16 would
# choose, rounds a half batch differently from a whole one), so the split of a batch over ranks
# cannot change the maths.
LINEAR = {
    "model": {"type": "fixtures_custom_model:LinearPixelNet"}, "backend.amp": False,
    "training.epochs": EPOCHS, "training.learning_rate": 0.01, "training.class_weighting": "none",
    "training.augment": {"hflip": False, "scale_min": 1, "scale_max": 1}, "training.log_interval": 1,
    "training.num_visualizations": 1, "telemetry.tensorboard": False,
}


# ------------------------------------------------------------------------------------------------------------ helpers


def torchrun(*args: str) -> list[str]:
    return [PYTHON, "-m", "torch.distributed.run", *args]


class Launch:
    """One launcher process and everything it starts; its output goes to ``log_path``.

    Used as a context manager: whatever is still running on exit (the test failed) is killed,
    workers included, so no test leaves processes behind.
    """

    def __init__(self, cmd: list[str], log_path: Path, env: dict[str, str]) -> None:
        self.cmd = cmd
        self.log_path = log_path
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    def __enter__(self) -> Launch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill_tree()

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def describe(self) -> str:
        return f"{' '.join(self.cmd)}\n--- last output:\n{self.log[-4000:]}"

    def wait(self, timeout: float = LAUNCH_TIMEOUT_S) -> int:
        """Exit status; a launcher still running after ``timeout`` is killed and fails the test."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill_tree()
            pytest.fail(f"still running after {timeout}s, killed: {self.describe()}")

    def kill_tree(self) -> None:
        try:
            procs = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            procs = []
        for p in [*procs, self.proc]:
            try:
                p.kill()
            except (psutil.NoSuchProcess, ProcessLookupError):
                pass
        self.proc.wait(30)


@contextlib.contextmanager
def two_nodes(work: Path, name: str, config: Path) -> Iterator[list[Launch]]:
    """Two single-process torchrun launchers, node ranks 0 and 1, on one c10d rendezvous; no restarts.

    Worker logs go to ``work/<name>_logs<node>``; every process is gone when the block ends.
    """
    port = free_port()
    with contextlib.ExitStack() as stack:
        launches = []
        for node in (0, 1):
            cmd = torchrun("--nnodes=2", "--nproc-per-node=1", f"--node-rank={node}", "--rdzv-backend=c10d",
                           f"--rdzv-endpoint=127.0.0.1:{port}", f"--rdzv-id={name}_{port}", "--max-restarts=0",
                           f"--log-dir={work / f'{name}_logs{node}'}", "--redirects=3",
                           "-m", "dist_seg.train", str(config))
            launches.append(stack.enter_context(Launch(cmd, work / f"{name}{node}.log", launch_env())))
        yield launches


def wait_until(condition: Callable[[], bool], what: str, *launches: Launch,
               timeout: float = LAUNCH_TIMEOUT_S) -> None:
    """Poll ``condition``; fail early when a launcher exits first, fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        for launch in launches:
            if launch.proc.poll() is not None:
                pytest.fail(f"exited with {launch.proc.returncode} before {what}: {launch.describe()}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def worker_logs(log_dir: Path) -> dict[tuple[int, int], dict[str, str]]:
    """``{(attempt, local_rank): {"stdout": ..., "stderr": ...}}`` from torchrun's ``--log-dir``."""
    logs: dict[tuple[int, int], dict[str, str]] = {}
    for path in log_dir.glob("*/attempt_*/*/std*.log"):
        key = (int(path.parent.parent.name.split("_")[1]), int(path.parent.name))
        logs.setdefault(key, {})[path.stem] = path.read_text(errors="replace")
    return logs


def write_config(path: Path, data_root: Path, cache_dir: Path, out_dir: Path, overrides: dict[str, Any]) -> Path:
    """A YAML config for a tiny run; ``overrides`` maps dotted keys to values."""
    raw = tiny_raw_config(data_root, out_dir, cache_dir)
    raw["training"].update({"batch_size": 2, "val_batch_size": 3})
    apply_overrides(raw, overrides.items())
    path.write_text(yaml.safe_dump(raw))
    return path


def gated(gate_dir: Path, hold_at: int, hold_ranks: list[int]) -> dict[str, Any]:
    return {"model": {"type": "gated_model:GatedNet", "gate_dir": str(gate_dir), "hold_at": hold_at,
                      "hold_ranks": hold_ranks}}


def held_pid(gate_dir: Path, rank: int) -> int | None:
    path = gate_dir / f"held.rank{rank}"
    return int(path.read_text()) if path.exists() else None


def final_weights(out_dir: Path) -> dict[str, torch.Tensor]:
    checkpoints = list_checkpoints(out_dir / "checkpoints")
    assert checkpoints[-1].path.name == f"epoch_{EPOCHS:04d}.pth", [c.path.name for c in checkpoints]
    return torch.load(checkpoints[-1].path, weights_only=True)["model"]


def history_epochs(out_dir: Path) -> list[int]:
    return [r["epoch"] for r in json.loads((out_dir / "history.json").read_text())]


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key, value in a.items():
        torch.testing.assert_close(value, b[key], msg=lambda m, k=key: f"{k}: {m}")


# -------------------------------------------------------------------------------------------------------- shared runs


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("dist")


@pytest.fixture(scope="module")
def odd_root(work: Path) -> Path:
    """4 sequences x 7 frames of 48x64; Video_003 is the validation split."""
    root = work / "data"
    generate_dataset(root, sequences=4, frames=7, size=(48, 64), seed=7)
    return root


@pytest.fixture(scope="module")
def config_for(work: Path, odd_root: Path) -> Callable[..., Path]:
    """``config_for(name, overrides)``: config file for a run writing to ``work/name``; one shared cache."""

    def make(name: str, overrides: dict[str, Any]) -> Path:
        return write_config(work / f"{name}.yaml", odd_root, work / "cache", work / name, overrides)

    return make


@pytest.fixture(scope="module")
def main_run(work: Path, config_for) -> dict[str, Any]:
    """``NPROC=2 launch/single_node.sh``: DeepLabV3+ ResNet-18, 2 epochs, TensorBoard, sync_bn requested,
    EMA of the weights and precise BN (the default) before each validation."""
    config = config_for("main", {"backend.sync_bn": True, "training.epochs": 2,
                                 "training.ema": {"enabled": True, "decay": 0.9}})
    log_dir = work / "main_logs"
    env = launch_env(NPROC="2", MAX_RESTARTS="0", PET_LOG_DIR=str(log_dir), PET_REDIRECTS="3")
    with Launch(["bash", "launch/single_node.sh", str(config)], work / "main_agent.log", env) as launch:
        rc = launch.wait()
    assert rc == 0, launch.describe()
    return {"out": work / "main", "logs": worker_logs(log_dir)}


@pytest.fixture(scope="module")
def two_node_run(work: Path, config_for) -> dict[str, Any]:
    """Two ``launch/multi_node.sh`` launchers (node ranks 0 and 1, one process each) on one c10d rendezvous."""
    config = config_for("two_node", LINEAR)
    port = free_port()
    with contextlib.ExitStack() as stack:
        launches = []
        for node in (0, 1):
            env = launch_env(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), NNODES="2", NODE_RANK=str(node),
                             NPROC="1", MAX_RESTARTS="0", RDZV_ID=f"two_node_{port}",
                             PET_LOG_DIR=str(work / f"two_node_logs{node}"), PET_REDIRECTS="3")
            launch = Launch(["bash", "launch/multi_node.sh", str(config)], work / f"two_node{node}.log", env)
            launches.append(stack.enter_context(launch))
        codes = [launch.wait() for launch in launches]
    return {"out": work / "two_node", "codes": codes, "launches": launches,
            "logs": [worker_logs(work / f"two_node_logs{node}") for node in (0, 1)]}


@pytest.fixture(scope="module")
def one_rank_run(work: Path, config_for) -> Path:
    """The same training in this process: 1 rank x batch 4 instead of 2 ranks x batch 2."""
    config = config_for("one_rank", {**LINEAR, "training.batch_size": 4})
    run_training(config_from_dict(yaml.safe_load(config.read_text())))
    return work / "one_rank"


# -------------------------------------------------------- one node: end to end, rank-0 outputs, SyncBatchNorm on gloo


def test_torchrun_two_ranks_train_end_to_end_and_only_rank0_writes(main_run):
    out, logs = main_run["out"], main_run["logs"]
    assert set(logs) == {(0, 0), (0, 1)}
    rank0, rank1 = logs[(0, 0)], logs[(0, 1)]
    assert "dist_seg: rank 0/2 on cpu (gloo)" in rank0["stdout"]
    assert "global batch 4" in rank0["stdout"]
    assert "done (completed)" in rank0["stdout"]
    # Other ranks are quiet: no progress, no summaries, no warnings.
    assert rank1 == {"stdout": "", "stderr": ""}

    history = json.loads((out / "history.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2]
    for record in history:
        assert record["world_size"] == 2 and record["global_batch_size"] == 4
        assert record["global_step"] == STEPS_PER_EPOCH * record["epoch"]
        # Throughput counts every rank's images: rate x time = all images of the epoch.
        assert record["train_images_per_s"] * record["epoch_time_s"] == pytest.approx(STEPS_PER_EPOCH * 4)
    assert [c.path.name for c in list_checkpoints(out / "checkpoints")] == ["epoch_0001.pth", "epoch_0002.pth"]
    state = torch.load(out / "checkpoints" / "epoch_0002.pth", weights_only=True)
    assert state["world_size"] == 2 and len(state["rng"]) == 2  # every rank's random streams, saved by rank 0
    for epoch in (1, 2):
        assert len(list((out / "visualizations" / f"epoch_{epoch:03d}").glob("*.png"))) == 2

    # TensorBoard: rank 0's event file in tensorboard/, rank 1's own (telemetry only) in tensorboard/rank1/.
    tb = out / "tensorboard"
    assert len(list(tb.glob("events.out.tfevents.*"))) == 1
    assert sorted(p.name for p in tb.iterdir() if p.is_dir()) == ["rank1"]
    assert len(list(rank_log_dir(tb, 1).glob("events.out.tfevents.*"))) == 1
    tags = {}
    for rank in (0, 1):
        acc = EventAccumulator(str(rank_log_dir(tb, rank)), size_guidance={"scalars": 0})
        acc.Reload()
        tags[rank] = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/throughput_img_s", "val/mIoU", "host/rank0/rss_mb"} <= tags[0]
    assert not any("rank1" in t for t in tags[0])
    assert "host/rank1/rss_mb" in tags[1]
    assert not any(t.startswith(("train/", "val/")) for t in tags[1])

    memory_log = (out / "memory_diagnostics.log").read_text()
    for rank in (0, 1):
        assert f"rank {rank}, step" in memory_log and f"VRAM PEAKS rank {rank}" in memory_log


def test_sync_bn_on_gloo_warns_and_keeps_per_rank_batchnorm(main_run):
    rank0 = main_run["logs"][(0, 0)]
    assert re.search(r"backend\.sync_bn is on but needs NCCL .*\(this run: gloo\); keeping per-rank BatchNorm",
                     rank0["stderr"]), rank0["stderr"]
    assert "SyncBatchNorm: BatchNorm statistics are synchronised" not in rank0["stdout"]
    weights = torch.load(main_run["out"] / "checkpoints" / "epoch_0002.pth", weights_only=True)["model"]
    assert any(k.endswith("running_mean") for k in weights)


# --------------------------------------------------------------------------------------------- distributed evaluation


def test_distributed_eval_equals_single_process_on_uneven_split(main_run, work):
    checkpoint = main_run["out"] / "checkpoints" / "epoch_0002.pth"
    config = main_run["out"] / "config.yaml"  # the resolved config the run wrote
    out = work / "eval"
    cmd = torchrun("--standalone", "--nproc_per_node=2", str(SUPPORT_DIR / "dist_eval_script.py"),
                   str(config), str(checkpoint), str(out))
    with Launch(cmd, work / "eval.log", launch_env()) as launch:
        assert launch.wait() == 0, launch.describe()
    ranks = [json.loads((out / f"rank{k}.json").read_text()) for k in (0, 1)]
    single = evaluate_checkpoint(config, checkpoint, DistContext(0, 0, 1, torch.device("cpu"), None))

    assert single["frames"] == single["val_frames"] == VAL_FRAMES
    # Validation during the 2-rank run scored what the checkpoint holds: the EMA weights with the
    # BatchNorm statistics precise BN averaged over both ranks (a rank with other statistics
    # would have scored its shard differently).
    last = json.loads((main_run["out"] / "history.json").read_text())[-1]
    assert last["epoch"] == 2
    assert last["val_mIoU"] == pytest.approx(single["mean_iou"], rel=1e-5)
    assert last["val_pixel_acc"] == pytest.approx(single["pixel_acc"], rel=1e-5)
    state = torch.load(checkpoint, weights_only=True)
    assert state["ema"]["updates"] == 2 * STEPS_PER_EPOCH
    assert any(not torch.equal(state["model"][k], state["model_raw"][k]) for k in state["model"]
               if k.endswith("weight"))
    assert VAL_FRAMES % (2 * 3) != 0  # world x val_batch_size leaves a ragged end
    # Each frame evaluated exactly once, by one rank; the shards are uneven (4 + 3).
    shards = [r["evaluated_here"] for r in ranks]
    assert sorted(len(s) for s in shards) == [3, 4]
    assert not set(shards[0]) & set(shards[1])
    assert sorted(shards[0] + shards[1]) == sorted(single["evaluated_here"])
    for report in ranks:
        assert report["world_size"] == 2 and report["frames"] == VAL_FRAMES
        assert report["confusion"] == single["confusion"]
        assert sum(map(sum, report["confusion"])) == VAL_FRAMES * 48 * 64
        assert report["mean_iou"] == pytest.approx(single["mean_iou"])
        assert report["pixel_acc"] == pytest.approx(single["pixel_acc"])
        assert report["loss"] == pytest.approx(single["loss"])


# ------------------------------------------------------------------------------- two nodes; data-parallel equivalence


def test_two_launchers_on_a_c10d_rendezvous_train_together(two_node_run):
    assert two_node_run["codes"] == [0, 0], [launch.describe() for launch in two_node_run["launches"]]
    node0, node1 = two_node_run["logs"]
    # One worker per launcher, global ranks 0 and 1 of one world of 2.
    assert set(node0) == set(node1) == {(0, 0)}
    assert "dist_seg: rank 0/2 on cpu (gloo)" in node0[(0, 0)]["stdout"]
    assert node1[(0, 0)] == {"stdout": "", "stderr": ""}
    assert history_epochs(two_node_run["out"]) == list(range(1, EPOCHS + 1))


def test_two_ranks_give_the_weights_and_losses_of_one_rank_with_twice_the_batch(two_node_run, one_rank_run):
    two, one = two_node_run["out"], one_rank_run
    w2, w1 = final_weights(two), final_weights(one)
    assert_same_weights(w2, w1)
    # Training moved the weights far more than the tolerance, so the equality means something.
    first = torch.load(two / "checkpoints" / "epoch_0001.pth", weights_only=True)["model"]
    assert (w2["classifier.weight"] - first["classifier.weight"]).abs().max() > 1e-3
    # Logged losses and validation metrics are global: the same numbers as the single process.
    h2, h1 = (json.loads((d / "history.json").read_text()) for d in (two, one))
    for r2, r1 in zip(h2, h1, strict=True):
        assert r2["world_size"] == 2 and r1["world_size"] == 1
        assert r2["global_step"] == r1["global_step"] and r2["global_batch_size"] == r1["global_batch_size"] == 4
        for key in ("train_loss", "val_loss", "val_mIoU", "val_pixel_acc"):
            assert r2[key] == pytest.approx(r1[key], rel=1e-5), key


# ------------------------------------------------------------ a killed worker: torchrun restarts it, training resumes


def test_killed_worker_is_restarted_and_resumes_without_losing_anything(work, config_for, two_node_run):
    gate = work / "kill_gate"
    # Rank 0 holds at its 7th training forward: epoch 2, after epoch 1's checkpoint is written.
    config = config_for("kill", {**LINEAR, **gated(gate, hold_at=STEPS_PER_EPOCH + 2, hold_ranks=[0])})
    out, log_dir = work / "kill", work / "kill_logs"
    env = launch_env(NPROC="2", MAX_RESTARTS="1", PET_LOG_DIR=str(log_dir), PET_REDIRECTS="3")
    with Launch(["bash", "launch/single_node.sh", str(config)], work / "kill_agent.log", env) as launch:
        wait_until(lambda: held_pid(gate, 0) is not None and (out / "checkpoints" / "epoch_0001.pth").exists(),
                   "rank 0 to reach the gate in epoch 2", launch)
        os.kill(held_pid(gate, 0), signal.SIGKILL)
        (gate / "open").touch()
        rc = launch.wait()
    assert rc == 0, launch.describe()
    logs = worker_logs(log_dir)
    assert {attempt for attempt, _ in logs} == {0, 1}, "torchrun did not restart the workers"
    # launch/single_node.sh gives every restart a fresh rendezvous store, so no warning about it.
    assert "pytorch/pytorch#135712" not in logs[(0, 0)]["stderr"]
    assert re.search(r"resumed from \S+epoch_0001\.pth: continuing at the start of epoch 2", logs[(1, 0)]["stdout"])
    assert history_epochs(out) == list(range(1, EPOCHS + 1))
    assert_same_weights(final_weights(out), final_weights(two_node_run["out"]))


# ------------------------------------------------------------ preemption (SIGTERM) and resuming on another world size


def test_sigterm_stops_every_rank_at_one_step_and_the_run_resumes(work, config_for, two_node_run):
    """Three launches of one run: preempted through torchrun, resumed and preempted on one rank, resumed to the end."""
    out = work / "term"
    gate = work / "term_gate"
    hold_at = STEPS_PER_EPOCH + 1  # epoch 2, batch 1: the signal lands well inside an epoch
    config = config_for("term", {**LINEAR, **gated(gate, hold_at=hold_at, hold_ranks=[0, 1])})

    def standalone(name: str, *overrides: str) -> Launch:
        cmd = torchrun("--standalone", "--nproc_per_node=2", f"--log-dir={work / f'{name}_logs'}", "--redirects=3",
                       "-m", "dist_seg.train", str(config), "--set", "training.resume_from_checkpoint=auto",
                       *(arg for item in overrides for arg in ("--set", item)))
        return Launch(cmd, work / f"{name}.log", launch_env())

    def stopped_at(name: str, cause: str, epoch: int) -> int:
        logs = worker_logs(work / f"{name}_logs")
        rank0 = logs[(0, 0)]["stdout"]
        stop = re.search(rf"stopped on {cause} at epoch {epoch}, batch (\d+): "
                         r"resume with training.resume_from_checkpoint: auto", rank0)
        assert stop and "done (preempted)" in rank0, rank0 + logs[(0, 0)]["stderr"]
        assert logs[(0, 1)] == {"stdout": "", "stderr": ""}  # rank 1 stopped cleanly too, no traceback
        return int(stop.group(1))

    def checkpoint_at(epoch: int, batch: int) -> None:
        latest = list_checkpoints(out / "checkpoints")[-1]
        assert (latest.epoch, latest.step) == (epoch, batch)
        state = torch.load(latest.path, weights_only=True)
        assert state["position"]["batch_in_epoch"] == batch and len(state["rng"]) == 2

    def calls(gate_dir: Path) -> list[int]:
        return [int((gate_dir / f"calls.rank{k}").read_text()) for k in (0, 1)]

    # 1. SIGTERM to the torchrun agent, which forwards it to both workers.
    with standalone("term1") as launch:
        wait_until(lambda: held_pid(gate, 0) is not None and held_pid(gate, 1) is not None,
                   "both ranks to reach the gate", launch)
        launch.proc.send_signal(signal.SIGTERM)
        wait_until(lambda: launch.log.count("closing signal SIGTERM") == 2, "torchrun to forward SIGTERM")
        (gate / "open").touch()
        launch.wait()  # torchrun itself exits non-zero after a signal, by design
    batch = stopped_at("term1", "SIGTERM", epoch=2)
    # Both ranks trained up to the same step, one past the signal (the vote's cost), and saved it.
    assert calls(gate) == [hold_at + 1] * 2 and batch == hold_at + 1 - STEPS_PER_EPOCH
    checkpoint_at(1, batch)

    # 2. Resumed, then SIGTERM to rank 1 alone: rank 0 learns of it only through the ranks' vote.
    gate2 = work / "term_gate2"
    hold_at2 = STEPS_PER_EPOCH - batch + 2  # the rest of epoch 2, then epoch 3, batch 2
    with standalone("term2", f"model.gate_dir={gate2}", f"model.hold_at={hold_at2}") as launch:
        wait_until(lambda: held_pid(gate2, 0) is not None and held_pid(gate2, 1) is not None,
                   "both ranks to reach the second gate", launch)
        os.kill(held_pid(gate2, 1), signal.SIGTERM)
        (gate2 / "open").touch()
        assert launch.wait() == 0, launch.describe()  # a clean stop of every worker, not a failure
    assert f"continuing at epoch 2, batch {batch}" in worker_logs(work / "term2_logs")[(0, 0)]["stdout"]
    assert stopped_at("term2", "a preemption signal to another rank", epoch=3) == 3
    assert calls(gate2) == [hold_at2 + 1] * 2
    checkpoint_at(2, 3)

    # 3. Resumed to the end: the same weights as the run that was never interrupted.
    with standalone("term3") as launch:
        assert launch.wait() == 0, launch.describe()
    assert "continuing at epoch 3, batch 3" in worker_logs(work / "term3_logs")[(0, 0)]["stdout"]
    assert history_epochs(out) == list(range(1, EPOCHS + 1))
    assert_same_weights(final_weights(out), final_weights(two_node_run["out"]))


def test_sigterm_to_plain_python_checkpoints_at_that_step_and_the_run_resumes(work, config_for, one_rank_run):
    gate = work / "py_gate"
    hold_at = STEPS_PER_EPOCH + 3
    config = config_for("py_term", {**LINEAR, **gated(gate, hold_at=hold_at, hold_ranks=[0]),
                                    "training.batch_size": 4})
    out = work / "py_term"
    with Launch([PYTHON, "-m", "dist_seg.train", str(config)], work / "py_term.log", launch_env()) as launch:
        wait_until(lambda: held_pid(gate, 0) is not None, "the run to reach the gate", launch)
        launch.proc.send_signal(signal.SIGTERM)
        (gate / "open").touch()
        assert launch.wait() == 0, launch.describe()
    # One process decides alone: it stops right after the step during which the signal came.
    assert "stopped on SIGTERM at epoch 2, batch 3: resume with training.resume_from_checkpoint: auto" in launch.log
    assert [c.path.name for c in list_checkpoints(out / "checkpoints")][-1] == "epoch_0002_batch_000003.pth"
    assert int((gate / "calls.rank0").read_text()) == hold_at

    cfg = yaml.safe_load(config.read_text())
    cfg["training"]["resume_from_checkpoint"] = "auto"
    summary = run_training(config_from_dict(cfg))
    assert summary.status == "completed"
    assert history_epochs(out) == list(range(1, EPOCHS + 1))
    assert_same_weights(final_weights(out), final_weights(one_rank_run))


def test_resume_on_more_ranks_continues_at_the_same_sample_and_keeps_the_schedule(work, config_for):
    """An elastic restart can change the world size: the position carries over as samples, not batches."""
    gate = work / "grow_gate"
    config = config_for("grow", {**LINEAR, **gated(gate, hold_at=0, hold_ranks=[])})
    out = work / "grow"
    # One process, batch 2: 10 steps per epoch; stop 4 steps (8 samples) into epoch 2.
    cfg = yaml.safe_load(config.read_text())
    cfg["training"]["max_steps"] = 2 * STEPS_PER_EPOCH + 4
    assert run_training(config_from_dict(cfg)).status == "max_steps"
    assert list_checkpoints(out / "checkpoints")[-1].path.name == "epoch_0002_batch_000004.pth"

    cmd = torchrun("--standalone", "--nproc_per_node=2", f"--log-dir={work / 'grow_logs'}", "--redirects=3",
                   "-m", "dist_seg.train", str(config), "--set", "training.resume_from_checkpoint=auto")
    with Launch(cmd, work / "grow.log", launch_env()) as launch:
        assert launch.wait() == 0, launch.describe()
    rank0 = worker_logs(work / "grow_logs")[(0, 0)]
    assert "carried over as a count of samples" in rank0["stderr"]
    # 8 samples are 2 batches of 2 ranks x 2, and 7 steps of this run's 5 per epoch.
    assert "continuing at epoch 2, batch 2 (global step 7)" in rank0["stdout"]
    # Each rank trains the rest of epoch 2 (3 batches) and epoch 3 (5): no sample skipped or repeated.
    assert [int((gate / f"calls.rank{k}").read_text()) for k in (0, 1)] == [8, 8]
    history = json.loads((out / "history.json").read_text())
    assert [r["epoch"] for r in history] == list(range(1, EPOCHS + 1))
    # The schedule ends with the last epoch: poly decay reaches zero at the last step.
    assert history[-1]["global_step"] == EPOCHS * STEPS_PER_EPOCH and history[-1]["lr"] == pytest.approx(0.0)


# --------------------------------------------------------------------------------------- a dead rank without restarts


def test_a_dead_rank_makes_every_launcher_exit_nonzero(work, config_for):
    gate = work / "dead_gate"
    config = config_for("dead", {**LINEAR, **gated(gate, hold_at=3, hold_ranks=[1]), "backend.dist_timeout_s": 20})
    with two_nodes(work, "dead", config) as launches:
        wait_until(lambda: held_pid(gate, 1) is not None, "rank 1 to reach the gate", *launches)
        os.kill(held_pid(gate, 1), signal.SIGKILL)
        codes = [launch.wait() for launch in launches]
    assert all(code != 0 for code in codes), codes
    assert not (work / "dead" / "checkpoints").exists()


# ------------------------------------------------------------------------------------- launch scripts, restart hazard


@pytest.mark.parametrize("script", ["single_node.sh", "multi_node.sh", "slurm.sbatch"])
def test_launch_scripts_parse(script):
    result = subprocess.run(["bash", "-n", str(REPO_ROOT / "launch" / script)], capture_output=True, text=True,
                            timeout=30, check=False)
    assert result.returncode == 0, result.stderr


def test_restart_hazard_names_the_fix_only_when_restarts_share_the_store(monkeypatch):
    monkeypatch.setenv("TORCHELASTIC_MAX_RESTARTS", "3")
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "True")
    assert "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1" in restart_hazard()
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "False")
    assert restart_hazard() is None
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "True")
    monkeypatch.setenv("TORCHELASTIC_MAX_RESTARTS", "0")
    assert restart_hazard() is None
