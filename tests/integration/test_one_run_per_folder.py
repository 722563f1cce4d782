"""One run per output folder, caches in use kept, refused resumes that change nothing, train-set overlap named.

Real processes: a training held at its first step by a gate, a second training and a
``prepare`` started against it, a lock holder killed with SIGKILL.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from support.helpers import PYTHON, REPO_ROOT, subprocess_env, tiny_raw_config

from dist_seg.config import config_from_dict
from dist_seg.errors import CheckpointError, ConfigError
from dist_seg.evaluate import main as evaluate_main
from dist_seg.paths import OUTPUT_LOCK, exclusive_output_folder
from dist_seg.train.run import run_training

pytestmark = pytest.mark.slow
TINY = {"type": "fixtures_custom_model:TinyNet"}


def _write(path: Path, raw: dict) -> Path:
    path.write_text(yaml.safe_dump(raw))
    return path


def _run(module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, "-m", module, *args], capture_output=True, text=True, cwd=REPO_ROOT,
                          env=subprocess_env(), timeout=300)


def _wait_for(path: Path, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 240
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def test_a_busy_output_folder_and_its_caches_are_left_alone(synth_root, tmp_path):
    gate, cache, out = tmp_path / "gate", tmp_path / "cache", tmp_path / "run"
    raw = tiny_raw_config(synth_root, out, cache_dir=cache)
    raw["model"] = {"type": "gated_model:GatedNet", "gate_dir": str(gate), "hold_at": 1}
    raw["training"]["epochs"] = 1
    first = subprocess.Popen([PYTHON, "-m", "dist_seg.train", str(_write(tmp_path / "a.yaml", raw))],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT,
                             env=subprocess_env())
    try:
        _wait_for(gate / "held.rank0", first)
        in_use = [p.parent for p in cache.rglob(".in_use")]
        assert len(in_use) == 1

        second = _run("dist_seg.train", str(_write(tmp_path / "b.yaml", {**raw, "model": TINY})))
        assert second.returncode == 1
        assert (f"error: training.output_dir: {out} is in use by another dist_seg run "
                f"(host {socket.gethostname()}, PID {first.pid}, since ") in second.stderr, second.stderr[-2000:]

        # Another cache setting with cache_keep_settings 1 would prune the first run's caches.
        other = tiny_raw_config(synth_root, tmp_path / "other", cache_dir=cache)
        other["training"]["image_size"] = [32, 48]
        other["dataset"]["cache_keep_settings"] = 1
        prepared = _run("dist_seg.prepare", str(_write(tmp_path / "c.yaml", other)))
        assert prepared.returncode == 0, prepared.stderr[-2000:]
        assert in_use[0].is_dir() and any(in_use[0].rglob("manifest.json"))
    finally:
        (gate / "open").touch()
        _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-3000:]


def test_the_lock_of_a_killed_run_is_taken_over(tmp_path):
    holder = subprocess.Popen([PYTHON, "-c", (
        "import sys, time; from pathlib import Path; from dist_seg.paths import exclusive_output_folder\n"
        "with exclusive_output_folder(Path(sys.argv[1]), 'training.output_dir'):\n"
        "    print('held', flush=True); time.sleep(300)\n"), str(tmp_path)],
        stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT, env=subprocess_env())
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(ConfigError, match=f"PID {holder.pid}, since"):
        with exclusive_output_folder(tmp_path, "training.output_dir"):
            pass
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with exclusive_output_folder(tmp_path, "training.output_dir"):
        assert f"PID {os.getpid()}," in (tmp_path / OUTPUT_LOCK).read_text()


@pytest.fixture(scope="module")
def trained(synth_root, tmp_path_factory) -> Path:
    """A finished one-epoch TinyNet run (trained on Video_000..002, validated on Video_003)."""
    out = tmp_path_factory.mktemp("trained") / "run"
    raw = tiny_raw_config(synth_root, out)
    raw["model"] = TINY
    raw["training"]["epochs"] = 1
    run_training(config_from_dict(raw))
    return out


def test_a_refused_resume_leaves_every_file_as_it_was(trained, synth_root):
    files = ["splits.json", "config.yaml", "history.json"]
    before = {name: (trained / name).read_bytes() for name in files}
    raw = tiny_raw_config(synth_root, trained)
    raw["model"] = TINY
    raw["training"].update(epochs=2, resume_from_checkpoint="auto")
    raw["dataset"]["split"]["val"] = ["Video_000"]  # a sequence the checkpoint trained on
    with pytest.raises(CheckpointError, match="Video_000 were trained on but are now in the validation"):
        run_training(config_from_dict(raw))
    assert {name: (trained / name).read_bytes() for name in files} == before


def test_evaluate_names_scored_sequences_the_checkpoint_trained_on(trained, synth_root, tmp_path, capsys):
    report = tmp_path / "report"
    assert evaluate_main(["--checkpoint", str(trained / "best_model.pth"), "--root", str(synth_root), "--out",
                          str(report), "--device", "cpu", "--workers", "0", "--custom-model", TINY["type"]]) == 0
    assert ("WARNING: 3 scored sequence(s) were trained on by this checkpoint (Video_000, Video_001, Video_002)"
            in capsys.readouterr().out)
    assert json.loads((report / "metrics.json").read_text())["train_overlap"] == ["Video_000", "Video_001",
                                                                                 "Video_002"]
    assert "were trained on by this checkpoint" in (report / "report.md").read_text()
