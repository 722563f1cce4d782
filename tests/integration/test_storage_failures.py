"""Issue 14: full disks, killed writers, changed resumes, late checks, raw tracebacks, read-only storage.

Each test reproduces a failure the hostile trial found (or a further case of the same family)
with real files, real checkpoints and real processes.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest
import torch
import yaml

from support.helpers import PYTHON, REPO_ROOT, subprocess_env, tiny_config, tiny_raw_config
from support.tmpfs import small_tmpfs
from dist_seg.config import load_config
from dist_seg.data.cache import allocated_memmap
from dist_seg.config.classes import DAVID_CLASSES
from dist_seg.data.pipeline import prepare
from dist_seg.checkpoint_file import list_checkpoints
from dist_seg.train.run import run_training
from dist_seg.errors import CheckpointError, ConfigError, DataError, DiskSpaceError

pytestmark = pytest.mark.slow

TINY = {"type": "fixtures_custom_model:TinyNet"}


def tiny_run(root: Path, out: Path, **overrides):
    """A tiny config with the two-conv TinyNet (seconds per run)."""
    overrides.setdefault("model", TINY)
    return tiny_config(root, out, **overrides)


def write_config(path: Path, raw: dict) -> Path:
    path.write_text(yaml.safe_dump(raw))
    return path


def run_cli(module: str, *args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, "-m", module, *args], capture_output=True, text=True, cwd=REPO_ROOT,
                          env=env or subprocess_env(), timeout=timeout)


def temporaries(*folders: Path) -> list[Path]:
    return [p for folder in folders if folder.is_dir() for p in folder.iterdir() if p.name.endswith(".tmp")]


@contextlib.contextmanager
def read_only_bind(folder: Path) -> Iterator[Path]:
    """``folder`` re-mounted read-only over itself (chmod does not stop root); skip where mount is not permitted."""
    first = subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True, text=True)
    if first.returncode != 0:
        pytest.skip(f"cannot bind-mount here ({first.stderr.strip() or 'mount failed'}); needs root")
    try:
        second = subprocess.run(["mount", "-o", "remount,ro,bind", str(folder)], capture_output=True, text=True)
        if second.returncode != 0:
            pytest.skip(f"cannot remount read-only ({second.stderr.strip()})")
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


# ----------------------------------------------------------------------------- 1. full disk


def test_cache_build_on_a_full_disk_is_a_clear_error_and_leaves_nothing(synth_root, tmp_path):
    cache = tmp_path / "cache"
    raw = tiny_raw_config(synth_root, tmp_path / "run", cache_dir=cache)
    raw["dataset"]["cache_size"] = [480, 640]  # 4 x 8 frames x 1.2 MB: far more than 3 MB
    config = write_config(tmp_path / "c.yaml", raw)
    with small_tmpfs(cache, "3M"):
        proc = run_cli("dist_seg.prepare", str(config))
        leftovers = [p for p in cache.rglob("*") if p.is_file() and p.name != ".lock"]
    assert proc.returncode == 1, proc.stderr  # not 135 (SIGBUS)
    assert "Traceback" not in proc.stderr
    assert "error:" in proc.stderr and str(cache) in proc.stderr and "MiB" in proc.stderr
    assert leftovers == []


def test_cache_array_allocation_on_a_full_disk_raises_and_removes_the_file(tmp_path):
    # The free-space check can be outrun (another writer fills the disk): allocation must fail cleanly too.
    folder = tmp_path / "small"
    with small_tmpfs(folder, "1M"):
        with pytest.raises(DiskSpaceError, match=str(folder)):
            allocated_memmap(folder / ".masks-x.npy.1.tmp", (8, 480, 640))
        assert list(folder.iterdir()) == []


def test_cache_arrays_are_allocated_not_sparse(synth_root, tmp_path):
    cfg = tiny_run(synth_root, tmp_path / "run")
    prepare(cfg, log=lambda _m: None, progress=False)
    arrays = list(cfg.dataset.cache_dir.rglob("*.npy"))
    assert arrays
    for array in arrays:
        st = array.stat()
        assert st.st_blocks * 512 >= st.st_size, array
        umask = os.umask(0o022)
        os.umask(umask)
        assert st.st_mode & 0o777 == 0o666 & ~umask, array  # readable by the team, like every other output


def test_checkpoint_on_a_full_disk_is_refused_before_writing(synth_root, tmp_path):
    out = tmp_path / "run"
    with small_tmpfs(out, "3M"):
        cfg = tiny_run(synth_root, out, training__epochs=1, telemetry__tensorboard=False,
                       model={"type": "misshapen_models:BigState", "megabytes": 8})
        with pytest.raises(DiskSpaceError, match=r"checkpoint epoch_0001\.pth needs .* MiB in .*checkpoints"):
            run_training(cfg)
        assert temporaries(out, out / "checkpoints") == []
        assert not list((out / "checkpoints").glob("*.pth"))


# ----------------------------------------------------------------------------- 2. leaked temporaries


def _train_until_a_checkpoint_is_being_written(config: Path, checkpoints: Path) -> bool:
    """Start training; SIGKILL it while a checkpoint temporary exists. False if the run ended first."""
    proc = subprocess.Popen([PYTHON, "-m", "dist_seg.train", str(config)], cwd=REPO_ROOT, env=subprocess_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while proc.poll() is None:
            if temporaries(checkpoints):
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return True
            time.sleep(0.002)
        return False
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_sigkill_during_checkpoint_writes_leaves_no_temporaries_after_a_resume(synth_root, tmp_path):
    out = tmp_path / "run"
    raw = tiny_raw_config(synth_root, out)
    raw["model"] = {"type": "misshapen_models:BigState", "megabytes": 48}
    raw["training"].update({"epochs": 50, "resume_from_checkpoint": "auto", "max_checkpoints": 1})
    raw["telemetry"]["tensorboard"] = False
    config = write_config(tmp_path / "c.yaml", raw)
    kills = 0
    for _ in range(8):
        kills += _train_until_a_checkpoint_is_being_written(config, out / "checkpoints")
        if kills == 3:
            break
    assert kills == 3
    assert temporaries(out / "checkpoints")  # what the kills left (the bug: nothing ever removed it)
    done = list_checkpoints(out / "checkpoints")
    raw["training"]["epochs"] = (done[-1].epoch if done else 0) + 1
    write_config(config, raw)
    proc = run_cli("dist_seg.train", str(config))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert temporaries(out, out / "checkpoints") == []


# ----------------------------------------------------------------------------- 3. resumes that change the run


@pytest.fixture
def trained(synth_root, tmp_path) -> Path:
    """Output folder of a finished one-epoch TinyNet run (val = Video_003)."""
    out = tmp_path / "run"
    run_training(tiny_run(synth_root, out, training__epochs=1))
    return out


def resume(synth_root, out: Path, **overrides):
    return run_training(tiny_run(synth_root, out, training__resume_from_checkpoint="auto", **overrides))


def test_resume_applies_new_optimizer_settings_and_says_so(synth_root, trained, capsys):
    resume(synth_root, trained, training__epochs=2, training__learning_rate=0.004, training__weight_decay=0.01,
           training__lr_schedule="constant")
    log = capsys.readouterr().out
    assert "training.learning_rate 0.002 -> 0.004" in log and "training.weight_decay 0.0001 -> 0.01" in log
    history = json.loads((trained / "history.json").read_text())
    last = history[-1] if isinstance(history, list) else history["epochs"][-1]
    assert last["lr"] == pytest.approx(0.004)
    state = torch.load(trained / "checkpoints" / "epoch_0002.pth", weights_only=True)
    assert {g["weight_decay"] for g in state["optimizer"]["param_groups"]} == {0.01}  # not the checkpoint's 1e-4
    assert yaml.safe_load((trained / "config.yaml").read_text())["training"]["weight_decay"] == 0.01


@pytest.mark.parametrize("change, message", [
    ({"dataset__classes": [{"name": c.name, "color": list(c.color)} for c in reversed(DAVID_CLASSES)]},
     "dataset.classes"),
    ({"model": {"type": "fixtures_custom_model:LinearPixelNet"}}, "model.type 'fixtures_custom_model:TinyNet' -> "),
    ({"training__optimizer": "sgd"}, "training.optimizer 'adamw' -> 'sgd'"),
    ({"dataset__split__val": ["Video_000"]}, "Video_000 were trained on but are now in the validation"),
    ({"dataset__split__val": [], "dataset__split__test": ["Video_001"]}, "Video_001 were trained on"),
])
def test_resume_refuses_changes_that_train_something_else(synth_root, trained, change, message):
    before = sorted(p.name for p in (trained / "checkpoints").iterdir())
    with pytest.raises(CheckpointError, match=message) as err:
        resume(synth_root, trained, training__epochs=2, **change)
    assert "training.resume_force: true" in str(err.value)
    assert sorted(p.name for p in (trained / "checkpoints").iterdir()) == before


def test_resume_with_a_custom_model_key_that_changes_the_weights_is_refused(synth_root, trained, capsys):
    with pytest.raises(CheckpointError, match="does not fit the configured model"):
        resume(synth_root, trained, training__epochs=2, model={**TINY, "width": 16})
    assert "applies model.width (unset) -> 16" in capsys.readouterr().out


@pytest.mark.parametrize("change", [
    {"dataset__classes": [{"name": c.name, "color": list(c.color)} for c in reversed(DAVID_CLASSES)]},
    {"training__optimizer": "sgd"},
    {"dataset__split__val": ["Video_000"]},
])
def test_resume_force_overrides_a_refusal_with_a_warning(synth_root, trained, change, capsys):
    summary = resume(synth_root, trained, training__epochs=2, training__resume_force=True, **change)
    assert summary.epochs_completed == 2
    assert "training.resume_force: resuming despite" in capsys.readouterr().err


@pytest.mark.parametrize("drop, message", [("optimizer", "holds no optimizer state"),
                                           ("train_state", "lacks train_state")])
def test_resume_from_a_checkpoint_missing_state_is_a_clear_error(synth_root, trained, tmp_path, drop, message):
    state = torch.load(trained / "checkpoints" / "epoch_0001.pth", weights_only=True)
    del state[drop]
    partial = tmp_path / "partial.pth"
    torch.save(state, partial)
    with pytest.raises(CheckpointError, match=message):
        run_training(tiny_run(synth_root, tmp_path / "b", training__epochs=2,
                              training__resume_from_checkpoint=str(partial)))


def test_resume_with_another_optimizers_state_is_a_clear_error(synth_root, trained, tmp_path):
    # The checkpoint claims adamw but holds a state with a parameter group too many.
    state = torch.load(trained / "checkpoints" / "epoch_0001.pth", weights_only=True)
    state["optimizer"]["param_groups"].append(dict(state["optimizer"]["param_groups"][0], params=[99]))
    odd = tmp_path / "odd.pth"
    torch.save(state, odd)
    with pytest.raises(CheckpointError, match="optimizer state does not fit"):
        run_training(tiny_run(synth_root, tmp_path / "b", training__epochs=2, training__resume_from_checkpoint=str(odd)))


# ----------------------------------------------------------------------------- 4. late checks


def _nothing_prepared(cfg) -> bool:
    return not Path(cfg.dataset.cache_dir).exists()


@pytest.mark.parametrize("overrides, error, message", [
    ({"dataset__split__val": ["Video_0003"]}, ConfigError, "dataset.split.val: 'Video_0003' is not one"),
    ({"dataset__split__test": ["nope"], "dataset__split__val": []}, ConfigError, "dataset.split.test"),
    ({"training__resume_from_checkpoint": "/nonexistent/epoch_0001.pth"}, CheckpointError,
     "training.resume_from_checkpoint: /nonexistent/epoch_0001.pth does not exist"),
    ({"model": {"type": "misshapen_models:WrongClassCount"}}, ConfigError, r"logits of shape \[1, 14, 48, 64\]"),
    ({"model": {"type": "misshapen_models:HalfSize"}}, ConfigError, r"logits of shape \[1, 13, 24, 32\]"),
    ({"model": {"type": "misshapen_models:RaisesInInit"}}, ConfigError, "raised KeyError"),
])
def test_mistakes_are_caught_before_the_cache_build(synth_root, tmp_path, overrides, error, message):
    cfg = tiny_run(synth_root, tmp_path / "run", **overrides)
    with pytest.raises(error, match=message):
        run_training(cfg)
    assert _nothing_prepared(cfg)


def test_output_dir_that_is_a_file_is_named(synth_root, tmp_path):
    (tmp_path / "run").write_text("not a folder")
    cfg = tiny_run(synth_root, tmp_path / "run")
    with pytest.raises(ConfigError, match="training.output_dir: .*run is a file"):
        run_training(cfg)
    assert _nothing_prepared(cfg)


def test_output_dir_under_a_file_is_named(synth_root, tmp_path):
    (tmp_path / "file").write_text("x")
    cfg = tiny_run(synth_root, tmp_path / "file" / "run")
    with pytest.raises(ConfigError, match="training.output_dir: cannot write"):
        run_training(cfg)


def test_read_only_checkpoints_folder_is_found_before_an_epoch_is_lost(synth_root, tmp_path):
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    cfg = tiny_run(synth_root, out)
    with read_only_bind(out / "checkpoints"):
        with pytest.raises(ConfigError, match="checkpoints/ folder.*cannot write"):
            run_training(cfg)
    assert _nothing_prepared(cfg)


def test_read_only_output_dir_is_named(synth_root, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    cfg = tiny_run(synth_root, out)
    with read_only_bind(out):
        with pytest.raises(ConfigError, match="training.output_dir: cannot write"):
            run_training(cfg)


@pytest.mark.parametrize("key", ["learning_rate", "weight_decay", "min_lr", "momentum"])
@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan"])
def test_non_finite_numbers_are_rejected(tmp_path, key, value):
    config = tmp_path / "c.yaml"
    config.write_text(f"dataset: {{root: /data}}\ntraining: {{output_dir: /out, {key}: {value}}}\n")
    with pytest.raises(ConfigError, match=f"training.{key}"):
        load_config(config)


def test_validate_reports_config_only_mistakes(synth_root, tmp_path):
    raw = tiny_raw_config(synth_root, tmp_path / "run")
    raw["model"]["backbone"] = "resnet999"
    raw["dataset"]["split"]["val"] = ["Video_0003"]
    proc = run_cli("dist_seg.validate", str(write_config(tmp_path / "c.yaml", raw)))
    assert proc.returncode == 1
    assert "resnet999" in proc.stdout + proc.stderr and "Video_0003" in proc.stdout + proc.stderr


# ----------------------------------------------------------------------------- 6. raw tracebacks


def test_non_utf8_config_is_one_line(tmp_path):
    config = tmp_path / "latin1.yaml"
    config.write_bytes("dataset: {root: /données}\ntraining: {output_dir: /out}\n".encode("latin-1"))
    proc = run_cli("dist_seg.train", str(config))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "is not UTF-8" in proc.stderr and "latin1.yaml" in proc.stderr


@pytest.mark.parametrize("text, key, lines", [
    ("dataset: {root: /a}\ntraining:\n  output_dir: /o\n  epochs: 3\n  epochs: 5\n", "epochs", "4 and 5"),
    ("training: {output_dir: /o, epochs: 2}\ndataset: {root: /a}\ntraining: {output_dir: /p}\n", "training", "1 and 3"),
    ("dataset: {root: /a, root: /b}\ntraining: {output_dir: /o}\n", "root", "1 and 1"),
])
def test_duplicate_yaml_keys_are_refused_with_the_lines(tmp_path, text, key, lines):
    config = tmp_path / "dupe.yaml"
    config.write_text(text)
    with pytest.raises(ConfigError, match=f"key '{key}' appears twice .*lines {lines}"):
        load_config(config)


def test_unknown_home_directory_is_a_config_error(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("dataset: {root: ~no_such_user_dist_seg/data}\ntraining: {output_dir: /o}\n")
    with pytest.raises(ConfigError, match="dataset.root: cannot expand '~no_such_user_dist_seg/data'"):
        load_config(config)
    with pytest.raises(ConfigError, match="config file path"):
        load_config("~no_such_user_dist_seg/c.yaml")


def test_image_size_too_large_for_memory_or_disk_is_one_line(synth_root, tmp_path):
    raw = tiny_raw_config(synth_root, tmp_path / "run")
    raw["model"] = TINY
    raw["training"]["image_size"] = [200000, 200000]
    proc = run_cli("dist_seg.train", str(write_config(tmp_path / "c.yaml", raw)))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "training.image_size [200000, 200000]" in proc.stderr
    proc = run_cli("dist_seg.prepare", str(write_config(tmp_path / "c.yaml", raw)))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "the cache build" in proc.stderr and "MiB are free" in proc.stderr


def test_debug_flag_and_variable_add_the_traceback(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("dataset: {root: /a}\ntraining: {output_dir: /o, learning_rate: .inf}\n")
    quiet = run_cli("dist_seg.validate", str(config))
    assert quiet.returncode == 1 and "Traceback" not in quiet.stderr
    for proc in (run_cli("dist_seg.validate", str(config), "--debug"),
                 run_cli("dist_seg.validate", str(config), env={**subprocess_env(), "DIST_SEG_DEBUG": "1"})):
        assert proc.returncode == 1 and "Traceback" in proc.stderr and "training.learning_rate" in proc.stderr


# ----------------------------------------------------------------------------- 7. read-only storage


def test_complete_cache_on_read_only_storage_is_used_without_a_lock(synth_root, tmp_path, capsys):
    cfg = tiny_run(synth_root, tmp_path / "run")
    prepare(cfg, log=lambda _m: None, progress=False)
    for lock in Path(cfg.dataset.cache_dir).rglob(".lock"):
        lock.unlink()  # as shipped on read-only media: no lock file
    with read_only_bind(Path(cfg.dataset.cache_dir)):
        summary = prepare(cfg, log=print, progress=False)
        assert summary.built == [] and len(summary.reused) == 4
        assert "cannot be written; its caches are complete" in capsys.readouterr().out
        stale = tiny_run(synth_root, tmp_path / "run", training__image_size=[32, 32])
        with pytest.raises(DataError, match="cannot write the cache folder"):
            prepare(stale, log=lambda _m: None, progress=False)


# ----------------------------------------------------------------------------- 8. predict


def test_predict_loads_a_model_whose_backbone_weights_file_is_gone(synth_root, tmp_path):
    weights = tmp_path / "backbone.pth"
    model = {"type": "deeplabv3plus", "backbone": "resnet18"}
    from dist_seg.models import build_model
    from dist_seg.config import ModelConfig

    torch.save(build_model(ModelConfig(**model), 13).state_dict(), weights)
    out = tmp_path / "run"
    run_training(tiny_config(synth_root, out, training__epochs=1, training__max_steps=1,
                             model={**model, "backbone_weights": str(weights)}))
    weights.unlink()
    frame = next((synth_root / "Images").rglob("*.png"))
    proc = run_cli("dist_seg.predict", "--checkpoint", str(out / "best_model.pth"), str(frame), "--out",
                   str(tmp_path / "pred"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert list((tmp_path / "pred").rglob("*.png"))


# ----------------------------------------------------------------------------- 9. distributed noise


def _dataset_with_a_corrupt_frame(synth_root: Path, tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "data"
    shutil.copytree(synth_root, root)
    corrupt = sorted((root / "Images" / "Video_001").iterdir())[2]
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    return root, corrupt


@pytest.mark.distributed
def test_data_error_under_torchrun_is_reported_once_by_rank_0(synth_root, tmp_path):
    root, corrupt = _dataset_with_a_corrupt_frame(synth_root, tmp_path)
    raw = tiny_raw_config(root, tmp_path / "run")
    raw["model"] = TINY
    config = write_config(tmp_path / "c.yaml", raw)
    env = {**subprocess_env(), "GLOO_SOCKET_IFNAME": "lo", "PET_LOCAL_ADDR": "127.0.0.1"}
    proc = subprocess.run([PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "dist_seg.train", str(config)], capture_output=True, text=True, cwd=REPO_ROOT,
                          env=env, timeout=300)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert corrupt.name in output
    # No rank dies in a transport error with its own traceback, and torchrun names rank 0 and the cause.
    for noise in ("gloo/transport", "Connection closed", "RuntimeError", "dist_seg/train", "dist_seg/eval"):
        assert noise not in output, output[-4000:]
    root_cause = output.split("Root Cause", 1)[1]
    assert re.search(r"rank\s*:\s*0 ", root_cause) and corrupt.name in root_cause, output[-4000:]


def test_error_inside_a_loader_worker_arrives_as_the_culprits_message(synth_root, tmp_path):
    # The frame breaks after prepare checked it, while a worker process decodes it.
    root, corrupt = _dataset_with_a_corrupt_frame(synth_root, tmp_path)
    script = tmp_path / "worker_error.py"
    script.write_text(f"""
import sys
from pathlib import Path
from torch.utils.data import DataLoader
from dist_seg.cli_common import run_cli
from dist_seg.data.dataset import DecodeDataset
from dist_seg.data.decode import LabelSpec
from dist_seg.data.discovery import Frame
from support.helpers import tiny_config

def main(argv):
    cfg = tiny_config(Path({str(root)!r}), Path({str(tmp_path / "run")!r}))
    frame = Frame("Video_001", {str(corrupt)!r}, {str(corrupt).replace('Images', 'Labels')!r})
    data = DecodeDataset([frame], LabelSpec.from_config(cfg.dataset), (48, 64))
    for _ in DataLoader(data, num_workers=1):
        pass
    return 0

sys.exit(run_cli(main))
""")
    proc = subprocess.run([PYTHON, str(script)], capture_output=True, text=True, env=subprocess_env(), timeout=120)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr and "DataLoader worker" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith("error: ") and corrupt.name in proc.stderr


def test_image_above_pillows_pixel_limit_is_a_data_error_naming_it(synth_root, monkeypatch):
    from PIL import Image

    from dist_seg.data.decode import load_image

    frame = next((synth_root / "Images").rglob("*.png"))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 48x64 is then a "decompression bomb"
    with pytest.raises(DataError, match=f"{frame.name}: cannot read image .*exceeds limit"):
        load_image(frame, (48, 64))
