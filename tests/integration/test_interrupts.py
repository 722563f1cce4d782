"""Issue 14, further cases: Ctrl-C, greyscale and rotated frames, YAML merge keys, resumes with a test root.

Each test reproduces a case a hostile user would try, with real files and real processes.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from support.helpers import PYTHON, REPO_ROOT, subprocess_env, tiny_config, tiny_raw_config
from dist_seg.config import load_config
from dist_seg.config.classes import ClassSpec
from dist_seg.data.decode import LabelSpec, load_image, load_mask
from dist_seg.checkpoint_file import list_checkpoints
from dist_seg.train.preemption import PreemptionWatch
from dist_seg.errors import ConfigError
from dist_seg.parallel import map_in_pool

pytestmark = pytest.mark.slow


# ----------------------------------------------------------------------------- Ctrl-C


def _train(config: Path) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, "-m", "dist_seg.train", str(config)], capture_output=True, text=True,
                          cwd=REPO_ROOT, env=subprocess_env(), timeout=300)


def test_ctrl_c_during_training_saves_a_checkpoint_and_exits_130(synth_root, tmp_path):
    """The first Ctrl-C stops at the next step with a checkpoint (not an epoch lost); the exit status says interrupted."""
    out = tmp_path / "run"
    raw = tiny_raw_config(synth_root, out)
    raw["model"] = {"type": "fixtures_custom_model:SignalAt", "call": 3, "signal_name": "SIGINT"}
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(raw))
    proc = _train(config)
    assert proc.returncode == 130, proc.stderr
    assert "Ctrl-C: saving a checkpoint before stopping" in proc.stdout
    assert "stopped on SIGINT at epoch 1, batch 3: resume with training.resume_from_checkpoint: auto" in proc.stdout
    assert "Traceback" not in proc.stderr
    assert [c.path.name for c in list_checkpoints(out / "checkpoints")] == ["epoch_0001_batch_000003.pth"]

    raw["model"]["call"] = 10**6
    raw["training"]["resume_from_checkpoint"] = "auto"
    config.write_text(yaml.safe_dump(raw))
    resumed = _train(config)
    assert resumed.returncode == 0, resumed.stderr
    assert re.search(r"resumed from \S*epoch_0001_batch_000003.pth", resumed.stdout)
    assert [c.path.name for c in list_checkpoints(out / "checkpoints")] == ["epoch_0001.pth", "epoch_0002.pth"]


def test_second_ctrl_c_stops_at_once_but_a_doubled_delivery_does_not():
    """Under torchrun one press reaches a rank twice within moments; only a later press is 'stop now'."""
    with PreemptionWatch() as watch:
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)  # the agent's forwarded copy of the same press
        assert watch.requested and watch.interrupted and watch.received == "SIGINT"
        watch._interrupted_at -= 5  # the user presses again seconds later
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def _sigint_handler(_item: int) -> str:
    return str(signal.getsignal(signal.SIGINT))


def test_decode_pool_workers_leave_ctrl_c_to_the_parent():
    """A terminal's Ctrl-C reaches every pool worker: they ignore it (no traceback each); the parent stops the pool."""
    if multiprocessing.get_start_method() != "fork":
        pytest.skip("the pool inherits handlers only with fork")
    handlers = set(map_in_pool(_sigint_handler, list(range(8)), workers=2, desc="probe", progress=False))
    assert handlers == {str(signal.SIG_IGN)}


# ----------------------------------------------------------------------------- frames and masks

BINARY = LabelSpec(classes=(ClassSpec("background", (0, 0, 0)), ClassSpec("road", (255, 255, 255))),
                   mask_format="rgb", unknown_colors="error")


@pytest.mark.parametrize("mode", ["L", "1"])
def test_black_and_white_mask_is_read_as_its_colours_in_rgb_format(tmp_path, mode):
    """A binary mask saved greyscale holds exactly the colours black and white: read it, don't refuse it."""
    values = np.zeros((4, 6), np.uint8)
    values[:, 3:] = 255
    path = tmp_path / "mask.png"
    Image.fromarray(values, "L").convert(mode).save(path)
    ids = load_mask(path, BINARY, None)
    assert ids.tolist() == [[0, 0, 0, 1, 1, 1]] * 4


def test_greyscale_mask_with_class_ids_in_rgb_format_still_points_to_index(tmp_path):
    path = tmp_path / "mask.png"
    Image.fromarray(np.array([[0, 1], [2, 1]], np.uint8), "L").save(path)
    with pytest.raises(Exception, match="dataset.mask_format: index"):
        load_mask(path, BINARY, None)


def test_exif_rotated_frame_is_decoded_upright(tmp_path):
    """A camera JPEG stored sideways with an EXIF orientation is used as every viewer shows it."""
    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:, :20] = 255  # left half white as stored; orientation 3 (180 degrees) shows it on the right
    exif = Image.Exif()
    exif[0x0112] = 3
    path = tmp_path / "frame.jpg"
    Image.fromarray(stored).save(path, exif=exif, quality=100)
    upright = load_image(path, None)  # [3, H, W]
    assert upright.shape == (3, 20, 40)
    assert upright[:, :, :15].mean() < 10 and upright[:, :, 25:].mean() > 245

    exif[0x0112] = 6  # 90 degrees: the upright frame is 40 high, 20 wide
    Image.fromarray(stored).save(path, exif=exif, quality=100)
    assert load_image(path, None).shape == (3, 40, 20)


def _binary_dataset(root: Path, frames: int = 3) -> Path:
    """One sequence of 16x16 frames whose masks are black-and-white: 0 background, 255 road on 3/4 of each."""
    for i in range(frames):
        (root / "Images" / "seq").mkdir(parents=True, exist_ok=True)
        (root / "Labels" / "seq").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((16, 16, 3), 40 * i, np.uint8)).save(root / "Images" / "seq" / f"f{i}.png")
        mask = np.zeros((16, 16), np.uint8)
        mask[4:] = 255
        Image.fromarray(mask, "L").save(root / "Labels" / "seq" / f"f{i}.png")
    return root


def test_index_masks_that_are_mostly_255_get_a_warning_naming_the_fix(tmp_path):
    """Under mask_format: index, 255 is "not annotated": a 0/255 binary dataset would silently train on the background."""
    from dist_seg.data.checks import check_dataset

    root = _binary_dataset(tmp_path / "data")
    classes = [{"name": "background", "color": [0, 0, 0]}, {"name": "road", "color": [255, 255, 255]}]
    cfg = tiny_config(root, tmp_path / "out", dataset__classes=classes, dataset__mask_format="index",
                      dataset__split={"val_fraction": 0.0, "test_fraction": 0.0})
    report = check_dataset(cfg.dataset, progress=False)
    [warning] = [p for p in report.warnings if p.kind == "mostly-unannotated"]
    assert "3 of 3 masks have more than half their pixels 255" in str(warning)
    assert "dataset.mask_format: rgb" in str(warning)
    # Read as colours, the same masks are fine: no warning, no error.
    rgb = tiny_config(root, tmp_path / "out", dataset__classes=classes, dataset__mask_format="rgb",
                      dataset__split={"val_fraction": 0.0, "test_fraction": 0.0})
    report = check_dataset(rgb.dataset, progress=False)
    assert not report.errors and not report.warnings


# ----------------------------------------------------------------------------- YAML


def test_yaml_merge_keys_are_yaml_not_duplicates(tmp_path):
    """``<<: *base`` is standard YAML; an explicit key next to it overrides the merged one (not a duplicate)."""
    path = tmp_path / "merge.yaml"
    path.write_text("base: &base\n  batch_size: 2\n  epochs: 3\n"
                    "dataset:\n  root: data\ntraining:\n  <<: *base\n  epochs: 5\n  output_dir: out\n")
    with pytest.raises(ConfigError, match="base: unknown") as info:  # the anchor's own section is not a key
        load_config(path)
    assert "not valid YAML" not in str(info.value)
    path.write_text("dataset:\n  root: data\ntraining: &t\n  batch_size: 2\n  <<: {epochs: 3, num_workers: 0}\n"
                    "  epochs: 5\n  output_dir: out\n")
    cfg = load_config(path)
    assert (cfg.training.batch_size, cfg.training.epochs, cfg.training.num_workers) == (2, 5, 0)


def test_a_list_as_a_key_is_one_line_naming_it(tmp_path):
    path = tmp_path / "odd.yaml"
    path.write_text("dataset:\n  root: data\ntraining:\n  [a, b]: 1\n")
    with pytest.raises(ConfigError, match=r"line 4.*plain name"):
        load_config(path)


# ----------------------------------------------------------------------------- resume with a test root


def _copy_sequence(root: Path, name: str, dest: Path) -> Path:
    """``dest``: a dataset root holding only sequence ``name`` of ``root`` (every top-level folder's copy)."""
    for folder in root.iterdir():
        if (folder / name).is_dir():
            shutil.copytree(folder / name, dest / folder.name / name)
    return dest


def test_resume_with_a_test_root_whose_sequences_share_training_names(synth_root, tmp_path):
    """A separate test root may reuse sequence names (Video_000 ...): another dataset, not a leak into test."""
    from dist_seg.train.run import run_training

    out = tmp_path / "run"
    test_root = _copy_sequence(synth_root, "Video_000", tmp_path / "test_root")
    settings = {"model": {"type": "fixtures_custom_model:TinyNet"}, "dataset__test_root": str(test_root),
                "dataset__split": {"val": ["Video_003"]}}
    run_training(tiny_config(synth_root, out, training__epochs=1, **settings))
    summary = run_training(tiny_config(synth_root, out, training__epochs=2, training__resume_from_checkpoint="auto",
                                       **settings))
    assert summary.status == "completed" and summary.epochs_completed == 2


# ----------------------------------------------------------------------------- output disk fills during training


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
