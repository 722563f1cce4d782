"""Export to ONNX and torch.export: parity with PyTorch, model card, ONNX predict, failure paths.

Checkpoints are real dist_seg checkpoints (``save_checkpoint``) of freshly built models; the
frames are the session's synthetic DAVID-style dataset, which their embedded config points to.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from PIL import Image
from support.helpers import tiny_raw_config

from dist_seg.checkpoint_file import save_checkpoint
from dist_seg.config import config_from_dict, config_to_dict
from dist_seg.deploy import artifact as artifact_module
from dist_seg.deploy.graph import load_export_source
from dist_seg.eval.inference import normalise
from dist_seg.export import main as export_main
from dist_seg.models import build_model
from dist_seg.predict import main as predict_main

DAVID_NAMES = ["traffic_sign", "building", "fence", "other", "pedestrian", "pole", "road_line", "road",
               "sidewalk", "vegetation", "car", "wall", "void"]
# Custom models by import path (tests/support is on the path), as a user names theirs.
TINY = "export_models:TinySegNet"


def make_checkpoint(directory: Path, synth_root: Path, model: dict, ema_noise: float | None = None) -> Path:
    """A real dist_seg checkpoint of a freshly built ``model``; with ``ema_noise`` an EMA state that differs."""
    raw = tiny_raw_config(synth_root, directory / "run")
    raw["model"] = model
    cfg = config_from_dict(raw)
    torch.manual_seed(0)
    net = build_model(cfg.model, cfg.dataset.num_classes).eval()
    state = {"model": net.state_dict(), "epoch": 3, "global_step": 24, "best_metric": 0.42,
             "config": config_to_dict(cfg)}
    if ema_noise is not None:
        state["ema"] = {"module": {k: v + ema_noise * torch.randn_like(v) if v.is_floating_point() else v
                                   for k, v in net.state_dict().items()}, "updates": 24}
    return save_checkpoint(state, directory / "checkpoints", "epoch_0003.pth", keep=5)


def frames(synth_root: Path, size: tuple[int, int], count: int = 3) -> np.ndarray:
    """Real synthetic frames resized to ``size`` as a uint8 [B,3,H,W] batch."""
    paths = sorted((synth_root / "Images").glob("*/*.png"))[::8][:count]
    arrays = [np.asarray(Image.open(p).convert("RGB").resize((size[1], size[0]), Image.BILINEAR)) for p in paths]
    return np.ascontiguousarray(np.stack(arrays).transpose(0, 3, 1, 2))


def pytorch_ids(checkpoint: Path, images: np.ndarray) -> np.ndarray:
    """Class ids from the checkpoint's model through the trainer's own normalisation."""
    predictor = load_export_source(checkpoint).predictor
    x = normalise(torch.from_numpy(images), torch.device("cpu"), torch.contiguous_format)
    with torch.no_grad():
        return predictor.model(x)["out"].argmax(1).numpy()


@pytest.fixture(scope="module")
def deeplab_checkpoint(synth_root, tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("deeplab"), synth_root,
                           {"type": "deeplabv3plus", "backbone": "resnet18", "output_stride": 16})


@pytest.fixture(scope="module")
def deeplab_onnx(deeplab_checkpoint, tmp_path_factory) -> Path:
    """Dynamic-size ONNX export of the DeepLabV3+ checkpoint at its training size (48x64)."""
    out = tmp_path_factory.mktemp("deeplab_onnx")
    assert export_main(["--checkpoint", str(deeplab_checkpoint), "--format", "onnx", "--out", str(out),
                        "--dynamic"]) == 0
    return out / "model.onnx"


def test_onnx_dynamic_export_agrees_with_pytorch_at_two_sizes(deeplab_onnx, deeplab_checkpoint, synth_root):
    session = ort.InferenceSession(str(deeplab_onnx), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["class_ids"]
    for size in [(64, 96), (96, 128)]:
        images = frames(synth_root, size)
        (ids,) = session.run(None, {"images": images})
        assert ids.dtype == np.uint8 and ids.shape == (3, *size)
        expected = pytorch_ids(deeplab_checkpoint, images)
        assert (ids != expected).mean() <= 0.001, size


def test_model_card_describes_the_contract_and_the_parity(deeplab_onnx, deeplab_checkpoint, synth_root):
    card = json.loads(deeplab_onnx.with_name("model.json").read_text())
    assert card["artifact"] == "model.onnx" and card["artifact_format"] == "onnx"
    assert [c["name"] for c in card["classes"]] == DAVID_NAMES
    assert card["classes"][7] == {"id": 7, "name": "road", "color": [128, 64, 128]}
    assert card["input"]["dtype"] == "uint8" and card["input"]["layout"] == "NCHW"
    assert (card["input"]["height"], card["input"]["width"], card["input"]["dynamic_size"]) == (48, 64, True)
    assert [o["name"] for o in card["outputs"]] == ["class_ids"] and card["outputs"][0]["dtype"] == "uint8"
    assert card["normalization"]["folded_into_graph"] is True
    assert card["normalization"]["mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert card["checkpoint"] | {"path": None} == {"path": None, "weights": "model", "epoch": 3,
                                                    "global_step": 24, "best_mIoU": 0.42}
    assert card["training_config"]["model"]["backbone"] == "resnet18"
    for package in ("torch", "onnx", "onnxscript", "onnxruntime"):
        assert card["exporter"][package]
    parity = card["parity"]
    assert parity["passed"] and parity["frames"] == 3 and str(synth_root) in parity["frames_source"]
    assert [(s["height"], s["width"]) for s in parity["sizes"]] == [(48, 64), (72, 85)]
    for s in parity["sizes"]:
        assert s["class_mismatch_share"] <= 0.001 and s["relative_logit_diff"] <= 1e-3
    assert not list(deeplab_onnx.parent.glob(".export-*"))


def test_onnx_predict_writes_the_ids_of_checkpoint_predict(deeplab_onnx, deeplab_checkpoint, synth_root, tmp_path):
    sequence = synth_root / "Images" / "Video_003"
    assert predict_main(["--checkpoint", str(deeplab_checkpoint), str(sequence), "--out", str(tmp_path / "ckpt"),
                         "--device", "cpu"]) == 0
    assert predict_main(["--model", str(deeplab_onnx), str(sequence), "--out", str(tmp_path / "onnx")]) == 0
    torch_ids = sorted((tmp_path / "ckpt").rglob("*_ids.png"))
    onnx_ids = sorted((tmp_path / "onnx").rglob("*_ids.png"))
    assert [p.relative_to(tmp_path / "ckpt") for p in torch_ids] == [p.relative_to(tmp_path / "onnx") for p in onnx_ids]
    assert len(onnx_ids) == 8
    a = np.stack([np.asarray(Image.open(p)) for p in torch_ids])
    b = np.stack([np.asarray(Image.open(p)) for p in onnx_ids])
    # Documented: float rounding may flip near-tie pixels; at most 0.1% of them.
    assert a.shape == b.shape and (a != b).mean() <= 0.001
    assert len(list((tmp_path / "onnx").rglob("*_overlay.png"))) == 8
    assert len(list((tmp_path / "onnx").rglob("*_color.png"))) == 8


def test_torch_export_artifact_keeps_the_contract(deeplab_checkpoint, synth_root, tmp_path):
    assert export_main(["--checkpoint", str(deeplab_checkpoint), "--format", "torch-export", "--out", str(tmp_path),
                        "--logits"]) == 0
    program = torch.export.load(str(tmp_path / "model.pt2")).module()
    images = frames(synth_root, (48, 64), count=4)  # another batch size than the export's example
    ids, logits = program(torch.from_numpy(images))
    assert ids.dtype == torch.uint8 and logits.shape == (4, 13, 48, 64)
    assert (ids.numpy() != pytorch_ids(deeplab_checkpoint, images)).mean() <= 0.001
    card = json.loads((tmp_path / "model.json").read_text())
    assert card["artifact"] == "model.pt2" and [o["name"] for o in card["outputs"]] == ["class_ids", "logits"]
    assert card["parity"]["passed"] and card["exporter"]["torch"] == torch.__version__


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["onnx", "torch-export"])
def test_lraspp_exports_with_parity(fmt, synth_root, tmp_path):
    checkpoint = make_checkpoint(tmp_path, synth_root, {"type": "lraspp", "backbone": "mobilenet_v3_large"})
    out = tmp_path / "out"
    assert export_main(["--checkpoint", str(checkpoint), "--format", fmt, "--out", str(out),
                        "--height", "64", "--width", "96"]) == 0
    card = json.loads((out / "model.json").read_text())
    assert card["parity"]["passed"] and card["model"]["type"] == "lraspp"
    images = frames(synth_root, (64, 96))
    if fmt == "onnx":
        (ids,) = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"]).run(
            None, {"images": images})
    else:
        ids = torch.export.load(str(out / "model.pt2")).module()(torch.from_numpy(images)).numpy()
    assert (ids != pytorch_ids(checkpoint, images)).mean() <= 0.001


def _perturb_classifier(path: Path) -> None:
    """Add noise to the classifier weights of an exported ONNX file, in place."""
    model = onnx.load(str(path))
    for init in model.graph.initializer:
        if "classifier" in init.name:
            weights = onnx.numpy_helper.to_array(init)
            noisy = weights + np.random.default_rng(0).normal(0, 1.0, weights.shape).astype(weights.dtype)
            init.CopyFrom(onnx.numpy_helper.from_array(noisy, init.name))
    onnx.save(model, str(path))


def test_perturbed_artifact_fails_parity_and_leaves_nothing(synth_root, tmp_path, monkeypatch, capsys):
    checkpoint = make_checkpoint(tmp_path, synth_root, {"type": TINY})
    real_export = artifact_module.export_onnx

    def export_then_perturb(wrapper, example, path, *args, **kwargs):
        info = real_export(wrapper, example, path, *args, **kwargs)
        _perturb_classifier(path)
        return info

    monkeypatch.setattr(artifact_module, "export_onnx", export_then_perturb)
    out = tmp_path / "out"
    assert export_main(["--checkpoint", str(checkpoint), "--format", "onnx", "--out", str(out),
                        "--custom-model", TINY]) == 1
    captured = capsys.readouterr()
    assert "parity check failed" in captured.err and "FAIL" in captured.out
    assert list(out.iterdir()) == []  # no artifact, no card, no staging directory


def test_custom_model_that_cannot_export_names_operator_and_model(synth_root, tmp_path, capsys):
    checkpoint = make_checkpoint(tmp_path, synth_root, {"type": "export_models:SpectralSegNet"})
    out = tmp_path / "out"
    assert export_main(["--checkpoint", str(checkpoint), "--format", "onnx", "--out", str(out),
                        "--custom-model", "export_models:SpectralSegNet"]) == 1
    err = capsys.readouterr().err
    assert "export_models:SpectralSegNet" in err and "svd" in err and "--format torch-export" in err
    assert not (out / "model.onnx").exists() and not (out / "model.json").exists()


def test_ema_weights_are_exported_when_asked_and_required(synth_root, tmp_path, capsys):
    plain = make_checkpoint(tmp_path / "plain", synth_root, {"type": TINY})
    assert export_main(["--checkpoint", str(plain), "--format", "torch-export", "--out", str(tmp_path / "x"),
                        "--ema", "--custom-model", TINY]) == 1
    assert "no EMA weights" in capsys.readouterr().err
    with_ema = make_checkpoint(tmp_path / "ema", synth_root, {"type": TINY}, ema_noise=0.5)
    out = tmp_path / "out"
    assert export_main(["--checkpoint", str(with_ema), "--format", "torch-export", "--out", str(out), "--ema",
                        "--logits", "--custom-model", TINY]) == 0
    assert json.loads((out / "model.json").read_text())["checkpoint"]["weights"] == "ema"
    _, logits = torch.export.load(str(out / "model.pt2")).module()(torch.from_numpy(frames(synth_root, (48, 64))))
    ema_source = load_export_source(with_ema, ema=True, custom_model=TINY)
    plain_source = load_export_source(with_ema, custom_model=TINY)
    x = normalise(torch.from_numpy(frames(synth_root, (48, 64))), torch.device("cpu"), torch.contiguous_format)
    with torch.no_grad():
        torch.testing.assert_close(logits, ema_source.predictor.model(x)["out"], rtol=1e-4, atol=1e-4)
        assert not torch.allclose(logits, plain_source.predictor.model(x)["out"], atol=1e-2)


def test_missing_export_extra_is_named(synth_root, tmp_path, monkeypatch, capsys):
    checkpoint = make_checkpoint(tmp_path, synth_root, {"type": TINY})
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` raise ImportError
    assert export_main(["--checkpoint", str(checkpoint), "--format", "onnx", "--out", str(tmp_path / "o"),
                        "--custom-model", TINY]) == 1
    assert 'pip install "dist_seg[export]"' in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
