"""benchmarks/peer_recipes.py: the torchvision and MMSeg recipes re-created as standalone trainers.

The recipe parts (LR scaling, poly decay, MMSeg's crop redraws, padding, the auxiliary
head's parameter group, the transforms' output) are checked directly; one real run of the
script per recipe, on a small synthetic dataset, checks the learning curve it writes. No
timing is checked.
"""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from support.helpers import PYTHON, subprocess_env  # noqa: E402

from benchmarks.peer_recipes import (  # noqa: E402
    IGNORE,
    RECIPES,
    PeerDataset,
    build_model,
    crop_box,
    model_recipe,
    pad_to,
    param_groups,
    poly_lr,
    scaled_lr,
)
from benchmarks.reference_pipeline import gather_samples, load_palette  # noqa: E402
from dist_seg.synth import generate_dataset  # noqa: E402

TIMEOUT_S = 600


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("peer_data")
    generate_dataset(root, sequences=3, frames=4, size=(48, 64), seed=5)
    return root


def test_learning_rates_follow_each_source_and_scale_linearly_with_the_batch():
    torchvision_lraspp = model_recipe(RECIPES["torchvision"], "lraspp_mobilenet_v3_large")
    assert (torchvision_lraspp.lr, torchvision_lraspp.weight_decay) == (0.01, 1e-6)  # README: default lr, --wd 1e-6
    torchvision_r50 = model_recipe(RECIPES["torchvision"], "deeplabv3_resnet50")
    assert (torchvision_r50.lr, torchvision_r50.weight_decay) == (0.02, 1e-4)
    assert model_recipe(RECIPES["mmseg"], "lraspp_mobilenet_v3_large") == RECIPES["mmseg"]
    assert scaled_lr(torchvision_r50, 4, "linear") == pytest.approx((0.0025, 0.0))  # 0.02 at 32 -> batch 4
    assert scaled_lr(RECIPES["mmseg"], 4, "linear") == pytest.approx((0.005, 5e-5))  # 0.01 at 8, eta_min with it
    assert scaled_lr(RECIPES["mmseg"], 4, "none") == (0.01, 1e-4)


def test_poly_decay_runs_from_the_base_to_the_floor():
    assert poly_lr(0.01, 1e-4, 0.9, 0, 100) == 0.01
    assert poly_lr(0.01, 1e-4, 0.9, 100, 100) == pytest.approx(1e-4)
    assert poly_lr(0.01, 0.0, 0.9, 50, 100) == pytest.approx(0.01 * 0.5 ** 0.9)
    assert poly_lr(0.01, 0.0, 0.9, 120, 100) == 0.0  # never negative past the end


def test_mmseg_crop_redraws_crops_that_one_class_fills():
    # Columns 0-9 are all class 1, columns 10-29 alternate classes 2 and 3. A 10x10 crop
    # starting in column 0-2 is more than 75% class 1.
    y = torch.ones(10, 30, dtype=torch.int64)
    y[:, 10::2], y[:, 11::2] = 2, 3
    lefts = {crop_box(y, (10, 10), 0.75, random.Random(seed))[1] for seed in range(300)}
    assert min(lefts) >= 3
    assert min(crop_box(y, (10, 10), None, random.Random(seed))[1] for seed in range(300)) < 3


def test_padding_fills_images_with_zero_and_targets_with_the_ignore_label():
    x, y = pad_to(torch.ones(3, 5, 6), torch.zeros(5, 6, dtype=torch.int64), (8, 7))
    assert x.shape == (3, 8, 7) and y.shape == (8, 7)
    assert x[:, 5:].abs().sum() == 0 and x[:, :, 6:].abs().sum() == 0
    assert (y[5:] == IGNORE).all() and (y[:, 6:] == IGNORE).all() and (y[:5, :6] == 0).all()


def test_the_auxiliary_head_gets_its_own_learning_rate():
    model, has_aux = build_model("deeplabv3_mobilenet_v3_large", 5)
    assert has_aux
    groups = param_groups(model, RECIPES["torchvision"], 0.01)
    assert [g["lr"] for g in groups] == [0.01, pytest.approx(0.1)]
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in model.aux_classifier.parameters()}
    lraspp, lraspp_aux = build_model("lraspp_mobilenet_v3_large", 5)
    assert not lraspp_aux and len(param_groups(lraspp, RECIPES["mmseg"], 0.01)) == 1


@pytest.mark.parametrize("name", list(RECIPES))
def test_transforms_crop_to_the_size_and_evaluate_at_the_base_size(synth, name):
    palette = load_palette(synth)
    samples = gather_samples(synth, ("Video_000",), 1)
    random.seed(0)
    train = PeerDataset(samples, palette, RECIPES[name], (40, 56), train=True)
    for i in range(len(train)):
        x, y = train[i]
        assert x.shape == (3, 40, 56) and y.shape == (40, 56) and y.dtype == torch.int64
        labels = set(y.unique().tolist())
        assert labels <= set(range(len(palette.names))) | {IGNORE} and palette.void not in labels
    x, y = PeerDataset(samples, palette, RECIPES[name], (40, 56), train=False)[0]
    assert x.shape == (3, 40, 53) and y.shape == (40, 53)  # 48x64 frames, shorter side to 40


@pytest.mark.slow
@pytest.mark.parametrize("name, model, extra", [("torchvision", "lraspp_mobilenet_v3_large", ["--amp"]),
                                                ("mmseg", "deeplabv3_mobilenet_v3_large", [])])
def test_the_script_trains_and_writes_a_learning_curve(synth, tmp_path, name, model, extra):
    out = tmp_path / "curve.json"
    result = subprocess.run(
        [PYTHON, str(REPO_ROOT / "benchmarks" / "peer_recipes.py"), "--recipe", name, "--model", model,
         "--data-root", str(synth), "--train", "Video_000", "Video_001", "--val", "Video_002", "--epochs", "2",
         "--size", "32", "48", "--batch-size", "2", "--workers", "0", "--out", str(out), *extra],
        env=subprocess_env(), capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    curve = json.loads(out.read_text())
    settings = curve["settings"]
    assert curve["pipeline"] == name and settings["model"] == model and settings["amp"] == ("--amp" in extra)
    assert curve["iterations"] == 2 * (8 // 2)  # 8 training frames, batch 2, drop_last, 2 epochs
    assert [e["epoch"] for e in curve["epochs"]] == [1, 2]
    assert all(0.0 <= e["val_mIoU"] <= 1.0 and math.isfinite(e["train_loss"]) for e in curve["epochs"])
    assert curve["epochs"][1]["wall_s"] > curve["epochs"][0]["wall_s"] > 0
    # The poly decay ends at the recipe's floor after the last iteration.
    assert curve["epochs"][-1]["lr"] == pytest.approx(settings["min_lr"], abs=1e-12)
    assert "aux x0.4" in result.stdout if name == "mmseg" else "aux none" in result.stdout
