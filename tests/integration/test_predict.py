"""predict end to end from a real checkpoint: legend strip, a corrupt frame, progress in a pipe, re-runs."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
import torch
from PIL import Image
from support.helpers import PYTHON, REPO_ROOT, run_module, subprocess_env, tiny_config

from dist_seg.config import DatasetConfig
from dist_seg.data.palette import Palette
from dist_seg.predict import collect_inputs
from dist_seg.predict import main as predict_main
from dist_seg.train.run import run_training

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def checkpoint(deeplab_run):
    return deeplab_run / "best_model.pth"


def test_overlay_is_the_frame_over_a_legend_of_the_predicted_classes(checkpoint, synth_root, tmp_path):
    frame = sorted((synth_root / "Images" / "Video_003").glob("*.png"))[0]
    assert predict_main(["--checkpoint", str(checkpoint), str(frame), "--out", str(tmp_path / "p"),
                         "--device", "cpu"]) == 0
    ids = np.asarray(Image.open(tmp_path / "p" / f"{frame.stem}_ids.png"))
    picture = np.asarray(Image.open(tmp_path / "p" / f"{frame.stem}_overlay.png"))
    height, width = np.asarray(Image.open(frame)).shape[:2]

    assert picture.shape[0] > height and picture.shape[1] == width
    strip = picture[height:].reshape(-1, 3)
    palette = Palette.from_config(DatasetConfig(root="unused"))
    for cid in np.unique(ids):
        colour = palette.colors[cid]
        assert np.all(strip == colour, axis=1).any(), f"{palette.names[cid]} missing from the legend"


def test_a_corrupt_frame_is_skipped_reported_and_fails_the_run(checkpoint, synth_root, tmp_path):
    seq = tmp_path / "Video_003"
    shutil.copytree(synth_root / "Images" / "Video_003", seq)
    frames = sorted(seq.glob("*.png"))
    bad = frames[3]
    bad.write_bytes(bad.read_bytes()[:200])  # truncated mid-file, as an interrupted copy leaves it
    out = tmp_path / "pred"

    # stderr is a pipe here, as under nohup or a CI log: progress must come as plain lines.
    proc = subprocess.run([PYTHON, "-m", "dist_seg.predict", "--checkpoint", str(checkpoint), str(seq),
                           "--out", str(out), "--device", "cpu", "--batch-size", "2", "--log-every", "4"],
                          capture_output=True, text=True, env=subprocess_env(), cwd=REPO_ROOT, timeout=300)
    assert proc.returncode == 1, proc.stderr
    written = sorted(p.name for p in (out / "Video_003").glob("*_ids.png"))
    assert written == [f"{f.stem}_ids.png" for f in frames if f != bad]
    assert f"skipping {bad}" in proc.stderr and "1 frame(s) could not be read" in proc.stderr
    assert "Traceback" not in proc.stderr
    progress = [line for line in proc.stderr.splitlines() if line.startswith("predict: ") and "frames (" in line]
    assert [line.split()[1] for line in progress] == ["4/8", "8/8"]
    assert "\r" not in proc.stderr
    assert f"wrote predictions for {len(frames) - 1} frame(s)" in proc.stdout


def test_predicting_into_the_input_folder_leaves_a_second_run_the_same_inputs(checkpoint, synth_root, tmp_path):
    seq = tmp_path / "Video_001"
    shutil.copytree(synth_root / "Images" / "Video_001", seq)
    before = collect_inputs([str(seq)])
    assert predict_main(["--checkpoint", str(checkpoint), str(seq), "--out", str(seq), "--device", "cpu"]) == 0
    assert len(list((seq / "Video_001").glob("*_overlay.png"))) == len(before)
    assert collect_inputs([str(seq)]) == before  # outputs went to a subfolder the listing does not read
    assert predict_main(["--checkpoint", str(checkpoint), str(seq), "--out", str(tmp_path), "--device", "cpu"]) == 1


def test_predict_loads_a_model_whose_backbone_weights_file_is_gone(synth_root, tmp_path):
    weights = tmp_path / "backbone.pth"
    model = {"type": "deeplabv3plus", "backbone": "resnet18"}
    from dist_seg.config import ModelConfig
    from dist_seg.models import build_model

    torch.save(build_model(ModelConfig(**model), 13).state_dict(), weights)
    out = tmp_path / "run"
    run_training(tiny_config(synth_root, out, training__epochs=1, training__max_steps=1,
                             model={**model, "backbone_weights": str(weights)}))
    weights.unlink()
    frame = next((synth_root / "Images").rglob("*.png"))
    proc = run_module("dist_seg.predict", "--checkpoint", str(out / "best_model.pth"), str(frame), "--out",
                   str(tmp_path / "pred"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert list((tmp_path / "pred").rglob("*.png"))
