"""Full disks, killed writers and read-only storage: one clear error, no temporaries left behind, and the
run goes on where it can (caches, checkpoints, TensorBoard events). Real mounts: small tmpfs, read-only binds.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from support.helpers import (
    PYTHON,
    REPO_ROOT,
    run_module,
    subprocess_env,
    tiny_config,
    tiny_raw_config,
    tiny_run,
    write_config,
)
from support.tmpfs import read_only_bind, small_tmpfs

from dist_seg.checkpoint_file import list_checkpoints
from dist_seg.data.cache import allocated_memmap
from dist_seg.data.pipeline import prepare
from dist_seg.errors import DataError, DiskSpaceError
from dist_seg.train.run import run_training

pytestmark = pytest.mark.slow


# ----------------------------------------------------------------------------- full disk


def temporaries(*folders: Path) -> list[Path]:
    return [p for folder in folders if folder.is_dir() for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_cache_build_on_a_full_disk_is_a_clear_error_and_leaves_nothing(synth_root, tmp_path):
    cache = tmp_path / "cache"
    raw = tiny_raw_config(synth_root, tmp_path / "run", cache_dir=cache)
    raw["dataset"]["cache_size"] = [480, 640]  # 4 x 8 frames x 1.2 MB: far more than 3 MB
    config = write_config(tmp_path / "c.yaml", raw)
    with small_tmpfs(cache, "3M"):
        proc = run_module("dist_seg.prepare", str(config))
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


# The event writer's own thread dies with the error (Python prints it); the run's warning follows it.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_tensorboard_on_a_full_disk_warns_once_and_training_output_goes_on(synth_root, tmp_path, capsys):
    """The event writer's thread fails on a full disk and raises at the next write: TensorBoard stops, not the run."""
    from support.tmpfs import small_tmpfs

    from dist_seg.train.outputs import RunOutputs

    with small_tmpfs(tmp_path / "small", size="300k") as small:
        out = RunOutputs(tiny_config(synth_root, small / "run"), active=True)
        out.start(["a", "b"], world_size=1)
        with pytest.raises(OSError):  # the disk is full now
            (small / "filler").write_bytes(b"\0" * 400_000)
        for step in range(20_000):  # until the writer's thread has hit the full disk and the main thread hears of it
            out.scalars({"train/loss": 1.0, "train/lr": 0.1}, step)
            if out.writer is None:
                break
        assert out.writer is None, "the full disk never reached the writer"
        out.scalars({"train/loss": 1.0}, step + 1)  # later writes are no-ops, not errors
        out.finish({"lr": 0.1}, {"hparam/best_mIoU": 0.5})
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1
    assert "cannot write TensorBoard events to" in warnings[0] and "training and checkpoints go on" in warnings[0]


# ----------------------------------------------------------------------------- killed writers


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
    proc = run_module("dist_seg.train", str(config))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert temporaries(out, out / "checkpoints") == []


# ----------------------------------------------------------------------------- read-only storage


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
