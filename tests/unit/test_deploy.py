"""Deployment helpers that need no export: logits resize, model card, parity sizes and thresholds, extras."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from support.helpers import PYTHON, subprocess_env

from dist_seg.config import DAVID_CLASSES
from dist_seg.data.palette import Palette
from dist_seg.deploy.card import build_card, card_palette, card_path, read_card
from dist_seg.deploy.onnx_predictor import resize_bilinear
from dist_seg.deploy.parity import SizeParity, check_sizes
from dist_seg.deploy.requirements import require
from dist_seg.errors import ExportError


@pytest.mark.parametrize("src,dst", [((6, 8), (48, 64)), ((12, 17), (37, 50)), ((20, 30), (7, 11))])
def test_resize_bilinear_matches_torch_interpolate(src, dst):
    x = torch.randn(13, *src)
    expected = F.interpolate(x[None], size=dst, mode="bilinear", align_corners=False)[0].numpy()
    got = resize_bilinear(x.numpy(), dst)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert (got.argmax(0) != expected.argmax(0)).mean() <= 0.001


def _card(tmp_path):
    artifact = tmp_path / "model.onnx"
    return artifact, build_card(
        artifact=artifact, artifact_format="onnx", model={"type": "deeplabv3plus"}, palette=Palette(DAVID_CLASSES),
        input_size=(48, 64), dynamic_size=False, ids_dtype="uint8", with_logits=True, mean=(0.5,) * 3,
        std=(0.25,) * 3, training_config={}, checkpoint={"epoch": 1}, exporter={"torch": torch.__version__},
        parity=None)


def test_model_card_round_trip_gives_the_palette(tmp_path):
    artifact, card = _card(tmp_path)
    assert card_path(artifact).name == "model.json"
    card_path(artifact).write_text(json.dumps(card))
    loaded = read_card(artifact)
    assert card_palette(loaded) == Palette(DAVID_CLASSES)
    assert loaded["parity"] == {"skipped": True}
    assert [o["name"] for o in loaded["outputs"]] == ["class_ids", "logits"]


def test_missing_or_foreign_model_card_is_a_clear_error(tmp_path):
    artifact = tmp_path / "model.onnx"
    with pytest.raises(ExportError, match="model.json not found"):
        read_card(artifact)
    card_path(artifact).write_text(json.dumps({"classes": []}))
    with pytest.raises(ExportError, match="not a dist_seg model card"):
        read_card(artifact)
    _, card = _card(tmp_path)
    del card["input"]
    card_path(artifact).write_text(json.dumps(card))
    with pytest.raises(ExportError, match="lacks input"):
        read_card(artifact)


def test_parity_sizes_and_thresholds():
    assert check_sizes(48, 64, dynamic_size=False) == [(48, 64)]
    assert check_sizes(64, 96, dynamic_size=True) == [(64, 96), (96, 128)]
    assert SizeParity(8, 8, 1e-5, 1e-6, 0.0005).passed
    assert not SizeParity(8, 8, 1e-5, 1e-6, 0.002).passed  # class agreement below 99.9%
    assert not SizeParity(8, 8, 0.5, 0.01, 0.0).passed  # logits off by 1% of their range
    assert not SizeParity(8, 8, 0.0, 0.0, 0.0, error="shape mismatch").passed


def test_missing_package_names_the_export_extra():
    with pytest.raises(ExportError, match=r'pip install "dist_seg\[export\]"'):
        require("dist_seg_module_that_is_not_installed", "ONNX export")


def test_onnx_predictor_imports_no_torch():
    code = "import sys, dist_seg.deploy.onnx_predictor; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([PYTHON, "-c", code], env=subprocess_env(), check=True, timeout=120)
