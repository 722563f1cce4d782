"""model.type smp end to end: train, resume, evaluate, predict and export, one rank and two; errors.

One trained checkpoint per architecture (Unet / ResNet-18 and Segformer / MiT-B0, random
init, 64x64, one epoch on a dataset of 12 frames) serves every test of that architecture.
The synthetic frames are 48x64, so native-resolution evaluation and prediction with
Segformer (stride 32) go through the padding to a multiple of 32.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

pytest.importorskip("segmentation_models_pytorch", reason="the zoo extra is not installed (pip install -e '.[zoo]')")

from support.helpers import PYTHON, REPO_ROOT, subprocess_env, tiny_raw_config  # noqa: E402
from support.torchrun import free_port, launch_env  # noqa: E402

from dist_seg.config import config_from_dict  # noqa: E402
from dist_seg.errors import CheckpointError, ConfigError  # noqa: E402
from dist_seg.evaluate import main as evaluate_main  # noqa: E402
from dist_seg.export import main as export_main  # noqa: E402
from dist_seg.predict import main as predict_main  # noqa: E402
from dist_seg.synth import generate_dataset  # noqa: E402
from dist_seg.train.run import run_training

pytestmark = pytest.mark.slow

ARCHS = {"unet": ("Unet", "resnet18"), "segformer": ("Segformer", "mit_b0")}
SIZE = [64, 64]
NUM_CLASSES = 13
TIMEOUT_S = 300


@pytest.fixture(scope="module")
def zoo_data(tmp_path_factory) -> Path:
    """3 sequences x 4 frames of 48x64: Video_000-001 train, Video_002 val."""
    root = tmp_path_factory.mktemp("zoo_data")
    generate_dataset(root, sequences=3, frames=4, size=(48, 64), seed=11)
    return root


def zoo_raw(data: Path, out: Path, arch: str, encoder: str, **training) -> dict:
    raw = tiny_raw_config(data, out, cache_dir=data.parent / "zoo_cache")
    raw["dataset"]["split"] = {"val": ["Video_002"], "test": []}
    raw["model"] = {"type": "smp", "arch": arch, "encoder": encoder}
    raw["training"].update({"epochs": 1, "image_size": SIZE, "num_visualizations": 1, **training})
    return raw


@pytest.fixture(scope="module", params=list(ARCHS))
def trained(request, zoo_data, tmp_path_factory) -> dict:
    arch, encoder = ARCHS[request.param]
    out = tmp_path_factory.mktemp(f"zoo_{request.param}") / "run"
    torch.manual_seed(0)
    summary = run_training(config_from_dict(zoo_raw(zoo_data, out, arch, encoder)))
    return {"name": request.param, "arch": arch, "encoder": encoder, "out": out, "summary": summary,
            "checkpoint": out / "best_model.pth", "data": zoo_data}


def test_trains_and_the_checkpoint_describes_the_smp_model(trained):
    assert trained["summary"].status == "completed" and trained["summary"].epochs_completed == 1
    state = torch.load(trained["checkpoint"], map_location="cpu", weights_only=True)
    assert {k.split(".")[0] for k in state["model"]} == {"backbone", "decoder", "segmentation_head"}
    model = state["config"]["model"]
    assert (model["type"], model["arch"], model["encoder"], model["backbone"]) == (
        "smp", trained["arch"], trained["encoder"], trained["encoder"])
    history = json.loads((trained["out"] / "history.json").read_text())
    assert np.isfinite(history[-1]["val_mIoU"])


def test_resumes_and_refuses_another_architecture(trained, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(trained["out"], out)
    raw = zoo_raw(trained["data"], out, trained["arch"], trained["encoder"], epochs=2,
                  resume_from_checkpoint="auto")
    other = dict(raw, model={**raw["model"], "arch": "FPN"})
    with pytest.raises(CheckpointError, match=f"model.arch '{trained['arch']}' -> 'FPN': the checkpoint does not fit"):
        run_training(config_from_dict(other))
    summary = run_training(config_from_dict(raw))
    assert summary.status == "completed" and summary.epochs_completed == 2
    assert len(json.loads((out / "history.json").read_text())) == 2


def test_evaluates_at_native_resolution_with_tta(trained, tmp_path):
    report = tmp_path / "eval"
    assert evaluate_main(["--checkpoint", str(trained["checkpoint"]), "--split", "val", "--out", str(report),
                          "--tta", "flip,scales=0.75,1", "--workers", "0", "--device", "cpu"]) == 0
    metrics = json.loads((report / "metrics.json").read_text())
    assert 0.0 <= metrics["mean_iou"] <= 1.0 and metrics["frames"] == 4


def test_predicts_class_ids_at_each_frame_size(trained, tmp_path):
    sequence = trained["data"] / "Images" / "Video_002"
    assert predict_main(["--checkpoint", str(trained["checkpoint"]), str(sequence), "--out", str(tmp_path),
                         "--device", "cpu"]) == 0
    ids = sorted(tmp_path.rglob("*_ids.png"))
    assert len(ids) == 4
    array = np.asarray(Image.open(ids[0]))
    assert array.shape == (48, 64) and array.max() < NUM_CLASSES


def test_exports_onnx_with_parity(trained, tmp_path):
    # Unet exports with dynamic height/width (parity at a size no multiple of 32 too); Segformer,
    # slower to trace, at its training size.
    dynamic = ["--dynamic"] if trained["name"] == "unet" else []
    assert export_main(["--checkpoint", str(trained["checkpoint"]), "--format", "onnx", "--out", str(tmp_path),
                        *dynamic]) == 0
    card = json.loads((tmp_path / "model.json").read_text())
    assert card["parity"]["passed"] and card["training_config"]["model"]["arch"] == trained["arch"]
    assert (tmp_path / "model.onnx").is_file()


# ----------------------------------------------------------------------------------------- config errors


@pytest.mark.parametrize("model, expected", [
    ({"arch": "Segformr", "encoder": "mit_b0"}, "model.arch: unknown segmentation_models_pytorch architecture "
                                                "'Segformr'; did you mean 'Segformer'?"),
    ({"arch": "Unet", "encoder": "resnet81"}, "model.encoder: unknown segmentation_models_pytorch encoder "
                                              "'resnet81'; did you mean 'resnet18'?"),
    ({"arch": "Segformer", "encoder": "mit_b0", "image_size": [48, 64]},
     "training.image_size: 48x64 (HxW) does not fit smp Segformer with encoder mit_b0"),
])
def test_config_errors_come_before_any_data_work(zoo_data, tmp_path, model, expected):
    size = model.pop("image_size", SIZE)
    raw = zoo_raw(zoo_data, tmp_path / "run", model["arch"], model["encoder"], image_size=size)
    raw["dataset"]["cache_dir"] = str(tmp_path / "cache")
    with pytest.raises(ConfigError) as err:
        run_training(config_from_dict(raw))
    assert str(err.value).startswith(expected) and "\n" not in str(err.value)
    assert not (tmp_path / "cache").exists() and not (tmp_path / "run").exists()


def test_missing_extra_is_one_line_naming_the_install_command(zoo_data, tmp_path):
    config = tmp_path / "smp.yaml"
    config.write_text(yaml.safe_dump(zoo_raw(zoo_data, tmp_path / "run", "Unet", "resnet18")))
    code = ("import sys; sys.modules['segmentation_models_pytorch'] = None\n"
            "from dist_seg.train.cli import main; sys.exit(main(sys.argv[1:]))")
    proc = subprocess.run([PYTHON, "-c", code, str(config)], cwd=REPO_ROOT, env=subprocess_env(),
                          capture_output=True, text=True, timeout=TIMEOUT_S)
    assert proc.returncode == 1, proc.stderr
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert "model.type: smp needs the optional zoo extra" in lines[0] and "pip install -e '.[zoo]'" in lines[0]
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------------ two ranks


@pytest.mark.distributed
def test_two_ranks_under_torchrun(zoo_data, tmp_path):
    out = tmp_path / "run"
    config = tmp_path / "smp.yaml"
    config.write_text(yaml.safe_dump(zoo_raw(zoo_data, out, "Unet", "resnet18", batch_size=2, val_batch_size=2)))
    port = free_port()
    env = launch_env()
    cmd = [PYTHON, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2", "--rdzv-backend=c10d",
           f"--rdzv-endpoint=127.0.0.1:{port}", "-m", "dist_seg.train", str(config)]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert "global batch 4" in proc.stdout + proc.stderr
    state = torch.load(out / "best_model.pth", map_location="cpu", weights_only=True)
    assert state["config"]["model"]["arch"] == "Unet" and not any(k.startswith("module.") for k in state["model"])
