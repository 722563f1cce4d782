"""Evaluation when things go wrong: read-only caches, full disks, torchrun shards, moved data, report folders.

``dist_seg.evaluate`` and the final evaluation after training, with real files, real
checkpoints, real mounts (read-only binds, small tmpfs) and real torchrun ranks.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from support.helpers import (
    PYTHON,
    REPO_ROOT,
    TINY_NET,
    save_model_checkpoint,
    subprocess_env,
    tiny_raw_config,
    tiny_run,
    write_config,
)
from support.tmpfs import read_only_bind, small_tmpfs
from support.torchrun import launch_env

from dist_seg.config import config_from_dict
from dist_seg.data.pipeline import prepare
from dist_seg.evaluate import main as evaluate_main
from dist_seg.models import build_model
from dist_seg.synth import generate_dataset
from dist_seg.train.loop import StopReason
from dist_seg.train.run import run_training

pytestmark = pytest.mark.slow
LINEAR = "fixtures_custom_model:LinearPixelNet"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """3 sequences of 6 frames (test split: Video_002), prepared, and a checkpoint with the config it names."""
    base = tmp_path_factory.mktemp("eval_errors")
    root = base / "data"
    generate_dataset(root, sequences=3, frames=6, size=(30, 40), seed=11)
    raw = tiny_raw_config(root, base / "run", cache_dir=base / "cache")
    raw["dataset"]["split"] = {"val": ["Video_001"], "test": ["Video_002"]}
    raw["model"] = {"type": LINEAR}
    raw["training"]["image_size"] = [16, 24]
    cfg = config_from_dict(raw)
    prepare(cfg, log=lambda _m: None, progress=False)
    torch.manual_seed(5)
    model = build_model(cfg.model, cfg.dataset.num_classes)
    ckpt = save_model_checkpoint(model, cfg, base / "run" / "checkpoints")
    return {"base": base, "root": root, "raw": raw, "ckpt": ckpt}


def evaluate(*args: str) -> int:
    return evaluate_main([*args, "--device", "cpu", "--workers", "0", "--custom-model", LINEAR])


def confusion(report: Path) -> list:
    return json.loads((report / "metrics.json").read_text())["confusion"]


# ----------------------------------------------------------------------------- read-only cache


def test_training_on_a_read_only_cache_completes_and_scores_its_test_split_in_memory(synth_root, tmp_path, capsys):
    out = tmp_path / "run"
    cfg = tiny_run(synth_root, out, training__epochs=1, dataset__split__test=["Video_002"])
    prepare(cfg, log=lambda _m: None, progress=False)  # the training caches, as shipped; no native masks
    cache = Path(cfg.dataset.cache_dir)
    with read_only_bind(cache):
        summary = run_training(cfg)
    assert summary.status is StopReason.COMPLETED
    log = capsys.readouterr().out
    assert "cannot write the cache folder" in log and "decoded into memory for each evaluation" in log
    assert not list(cache.rglob("native"))
    # The in-memory masks score exactly like the cached ones built by a later evaluation.
    assert evaluate_main(["--checkpoint", str(out / "best_model.pth"), "--split", "test", "--out", str(tmp_path / "e"),
                          "--device", "cpu", "--workers", "0", "--custom-model", TINY_NET["type"]]) == 0
    assert list(cache.rglob("native"))
    assert confusion(tmp_path / "e") == confusion(out / "eval" / "test")


def test_evaluate_reads_fresh_native_masks_on_read_only_storage_without_a_lock(run, tmp_path, capsys):
    cache = tmp_path / "cache"
    args = ["--checkpoint", str(run["ckpt"]), "--split", "test", "--cache-dir", str(cache)]
    assert evaluate(*args, "--out", str(tmp_path / "first")) == 0
    for lock in cache.rglob(".lock"):
        lock.unlink()  # as shipped on read-only media: no lock file
    capsys.readouterr()
    with read_only_bind(cache):
        assert evaluate(*args, "--out", str(tmp_path / "second")) == 0
    printed = capsys.readouterr()
    assert "native masks: decoding" not in printed.out and "error" not in printed.err
    assert confusion(tmp_path / "second") == confusion(tmp_path / "first")


# ----------------------------------------------------------------------------- full disk


def test_native_mask_cache_on_a_full_disk_is_a_clear_error_and_leaves_nothing(run, tmp_path):
    big = tmp_path / "big"
    generate_dataset(big, sequences=1, frames=4, size=(480, 640), seed=3)  # 1.2 MB of masks for a 1 MB disk
    cache = tmp_path / "cache"
    with small_tmpfs(cache, "1M"):
        proc = subprocess.run([PYTHON, "-m", "dist_seg.evaluate", "--checkpoint", str(run["ckpt"]), "--root",
                               str(big), "--cache-dir", str(cache), "--out", str(tmp_path / "o"), "--device", "cpu",
                               "--workers", "0", "--custom-model", LINEAR], capture_output=True, text=True, cwd=REPO_ROOT,
                              env=subprocess_env(), timeout=300)
        leftovers = [p for p in cache.rglob("*") if p.is_file() and p.name != ".lock"]
    assert proc.returncode == 1, proc.stderr[-2000:]  # not 135 (SIGBUS)
    assert "Traceback" not in proc.stderr
    assert re.search(r"error: the native mask cache .* needs 1\.\d MiB in .*/native but only \d\.\d MiB are free",
                     proc.stderr), proc.stderr
    assert leftovers == []


def test_a_final_evaluation_that_cannot_be_written_leaves_the_completed_run_successful(tmp_path):
    root = tmp_path / "data"
    generate_dataset(root, sequences=4, frames=8, size=(240, 320), seed=7)  # test masks: 0.6 MB at native size
    cache = tmp_path / "cache"
    raw = tiny_raw_config(root, tmp_path / "run", cache_dir=cache)  # training caches at 48x64: 0.45 MB
    raw["model"] = {"type": "fixtures_custom_model:TinyNet"}
    raw["dataset"]["split"]["test"] = ["Video_002"]
    raw["training"]["epochs"] = 1
    config = write_config(tmp_path / "c.yaml", raw)
    with small_tmpfs(cache, "800K"):
        proc = subprocess.run([PYTHON, "-m", "dist_seg.train", str(config)], capture_output=True, text=True,
                              cwd=REPO_ROOT, env=subprocess_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "warning: final evaluation failed: the native mask cache" in proc.stderr
    assert "MiB are free" in proc.stderr and "python -m dist_seg.evaluate --checkpoint" in proc.stderr
    assert (tmp_path / "run" / "best_model.pth").is_file()


# ----------------------------------------------------------------------------- torchrun


@pytest.mark.distributed
def test_bad_frame_in_one_ranks_shard_under_torchrun_is_reported_once_by_rank_0(run, tmp_path):
    broken = tmp_path / "data"
    shutil.copytree(run["root"], broken)
    # Video_001 is rank 1's shard (longest first to the least-loaded rank: 000 -> 0, 001 -> 1, 002 -> 0).
    victim = sorted((broken / "Labels" / "Video_001").glob("*.png"))[2]
    victim.write_bytes(victim.read_bytes()[:60])
    env = launch_env()
    proc = subprocess.run([PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "dist_seg.evaluate", "--checkpoint", str(run["ckpt"]), "--root", str(broken),
                           "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "o"), "--device", "cpu",
                           "--workers", "0", "--custom-model", LINEAR], capture_output=True, text=True, cwd=REPO_ROOT,
                          env=env, timeout=300)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert output.count(f"error: 1 problem(s) in the frames to evaluate:\n  {victim}") == 1, output[-4000:]
    for noise in ("gloo/transport", "Connection closed", "RuntimeError", "dist_seg/train", "dist_seg/eval"):
        assert noise not in output, output[-4000:]
    root_cause = output.split("Root Cause", 1)[1]
    assert re.search(r"rank\s*:\s*0 ", root_cause) and victim.name in root_cause, output[-4000:]


# ----------------------------------------------------------------------------- data changed since the split


def _split_run(run, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the data, split and prepared by its own config; returns (data root, config path)."""
    root = tmp_path / "data"
    shutil.copytree(run["root"], root)
    raw = json.loads(json.dumps(run["raw"]))
    raw["dataset"]["root"], raw["dataset"]["cache_dir"] = str(root), str(tmp_path / "cache")
    raw["training"]["output_dir"] = str(tmp_path / "run")
    config = write_config(tmp_path / "c.yaml", raw)
    prepare(config_from_dict(raw), log=lambda _m: None, progress=False)
    return root, config


@pytest.mark.parametrize("change", ["frame deleted", "dataset moved"])
def test_evaluate_after_the_data_changed_names_what_splits_json_lists_and_the_fix(run, tmp_path, capsys, change):
    root, config = _split_run(run, tmp_path)
    if change == "frame deleted":
        gone = sorted((root / "Images" / "Video_002").glob("*.png"))[3]
        gone.unlink()
    else:
        gone = root
        root.rename(tmp_path / "moved")
    assert evaluate("--checkpoint", str(run["ckpt"]), str(config), "--out", str(tmp_path / "o")) == 1
    err = capsys.readouterr().err
    assert f"{tmp_path / 'run' / 'splits.json'} lists {gone}, which no longer exists" in err, err
    assert "python -m dist_seg.prepare CONFIG" in err and "--root DIR" in err and "Traceback" not in err


# ----------------------------------------------------------------------------- report folder


@pytest.mark.parametrize("problem", ["read-only", "a file"])
def test_a_report_folder_that_cannot_be_written_is_named_before_evaluating(run, tmp_path, capsys, problem):
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    out = blocked / "report"
    if problem == "a file":
        out.write_text("not a folder")
    with read_only_bind(blocked) if problem == "read-only" else contextlib.nullcontext():
        status = evaluate("--checkpoint", str(run["ckpt"]), "--split", "test", "--cache-dir",
                          str(tmp_path / "cache"), "--out", str(out))
    printed = capsys.readouterr()
    assert status == 1
    expected = "cannot write to" if problem == "read-only" else "is a file, not a folder"
    assert printed.err.startswith("error: --out: ") and str(out) in printed.err and expected in printed.err, printed.err
    assert "evaluate:" not in printed.out and not (tmp_path / "cache").exists()  # nothing evaluated
