"""Inference precision: predict of a trained checkpoint agrees with predict of its ONNX export at native size.

On a CPU with native bf16 (this project's machines), autocast used to be the predict default,
and a briefly trained model's checkpoint and export disagreed on up to 8 % of pixels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dist_seg.export import main as export_main
from dist_seg.predict import main as predict_main
from dist_seg.synth import generate_dataset

pytestmark = pytest.mark.slow


def _ids(folder: Path) -> np.ndarray:
    return np.stack([np.asarray(Image.open(p)) for p in sorted(folder.rglob("*_ids.png"))])


def test_checkpoint_and_onnx_predict_agree_at_native_size(trained_checkpoint, tmp_path, capsys):
    # Frames of another size than the network's 48x64: both predictors resize them and upsample back.
    generate_dataset(tmp_path / "native", sequences=1, frames=3, size=(72, 96), seed=3)
    frames = tmp_path / "native" / "Images" / "Video_000"
    assert export_main(["--checkpoint", str(trained_checkpoint), "--format", "onnx", "--out",
                        str(tmp_path / "onnx")]) == 0
    assert predict_main(["--checkpoint", str(trained_checkpoint), str(frames), "--out", str(tmp_path / "ckpt"),
                         "--device", "cpu"]) == 0
    assert "predict: precision fp32 (the CPU default; --precision bf16 runs bfloat16 autocast)" \
        in capsys.readouterr().out
    assert predict_main(["--model", str(tmp_path / "onnx" / "model.onnx"), str(frames), "--out",
                         str(tmp_path / "onnx_pred")]) == 0
    assert "predict: precision fp32 (the exported model on ONNX Runtime)" in capsys.readouterr().out
    ours, exported = _ids(tmp_path / "ckpt"), _ids(tmp_path / "onnx_pred")
    assert ours.shape == exported.shape == (3, 72, 96)
    assert (ours == exported).mean() >= 0.999


def test_precision_is_chosen_and_said(trained_checkpoint, tmp_path, capsys):
    image = tmp_path / "frame.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(image)
    assert predict_main(["--checkpoint", str(trained_checkpoint), str(image), "--out", str(tmp_path / "bf16"),
                         "--device", "cpu", "--precision", "bf16"]) == 0
    assert "predict: precision bf16 (--precision bf16)" in capsys.readouterr().out
    assert predict_main(["--checkpoint", str(trained_checkpoint), str(image), "--out", str(tmp_path / "fp16"),
                         "--device", "cpu", "--precision", "fp16"]) == 1
    assert "--precision fp16 needs a GPU" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        predict_main(["--model", "model.onnx", str(image), "--out", str(tmp_path / "x"), "--precision", "bf16"])
    assert "an exported --model runs in float32" in capsys.readouterr().err
