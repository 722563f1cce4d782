"""The recipe switches wired through the real trainer: photometric jitter, EMA, losses, AMP auto, BN, init_from."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from support.helpers import TINY_NET, tiny_config

from dist_seg.checkpoint_file import list_checkpoints
from dist_seg.config import AugmentConfig, PhotometricConfig
from dist_seg.deploy.graph import load_export_source
from dist_seg.models import build_model
from dist_seg.runtime import amp_policy
from dist_seg.runtime.device import resolve_runtime
from dist_seg.runtime.distributed import DistContext
from dist_seg.train.augment import BatchPreparer
from dist_seg.train.precise_bn import check_bn_gap
from dist_seg.train.run import run_training

pytestmark = pytest.mark.slow

CPU = DistContext(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"), backend=None)
RECIPE = {"training__augment__photometric__enabled": True, "training__ema__enabled": True,
          "training__ema__decay": 0.9, "training__precise_bn_batches": 2}


def latest(out_dir: Path) -> dict:
    return torch.load(list_checkpoints(out_dir / "checkpoints")[-1].path, weights_only=True)


def test_photometric_changes_images_not_masks_and_follows_the_seed():
    prep = BatchPreparer(torch.device("cpu"), torch.contiguous_format, (16, 20))
    images = torch.randint(0, 256, (3, 3, 16, 20), dtype=torch.uint8)
    masks = torch.randint(0, 5, (3, 16, 20), dtype=torch.uint8)
    geometric_off = {"hflip": False, "scale_min": 1.0, "scale_max": 1.0}
    plain = AugmentConfig(**geometric_off)
    jitter = AugmentConfig(**geometric_off, photometric=PhotometricConfig(enabled=True))

    x0, y0 = prep.train_batch(images, masks, plain, torch.Generator().manual_seed(3))
    x1, y1 = prep.train_batch(images, masks, jitter, torch.Generator().manual_seed(3))
    x2, y2 = prep.train_batch(images, masks, jitter, torch.Generator().manual_seed(3))
    x3, _ = prep.train_batch(images, masks, jitter, torch.Generator().manual_seed(4))
    assert torch.equal(y0, y1) and torch.equal(y1, y2)
    assert not torch.allclose(x0, x1, atol=1e-3)
    assert torch.equal(x1, x2)
    assert not torch.allclose(x1, x3, atol=1e-3)


def test_photometric_changes_what_the_trainer_learns_reproducibly(synth_root, tmp_path):
    runs = {}
    # The jitter acts on the batches, whatever the model: the two-conv TinyNet shows it in a fraction of the time.
    for name, on in (("a", True), ("b", True), ("off", False)):
        run_training(tiny_config(synth_root, tmp_path / name, training__epochs=1, training__max_steps=3,
                                 training__augment__photometric__enabled=on, model=TINY_NET))
        runs[name] = latest(tmp_path / name)["model"]
    assert all(torch.equal(runs["a"][k], runs["b"][k]) for k in runs["a"])
    assert not all(torch.equal(runs["a"][k], runs["off"][k]) for k in runs["a"])


@pytest.fixture(scope="module")
def recipe_run(synth_root, tmp_path_factory) -> Path:
    """An uninterrupted 2-epoch DeepLabV3+ run with photometric jitter, EMA and precise BN."""
    out = tmp_path_factory.mktemp("recipe") / "straight"
    run_training(tiny_config(synth_root, out, training__epochs=2, **RECIPE))
    return out


def test_ema_and_precise_bn_survive_an_exact_resume(synth_root, tmp_path, recipe_run):
    straight = recipe_run
    split = tmp_path / "split"
    first = run_training(tiny_config(synth_root, split, training__epochs=2, training__max_steps=4, **RECIPE))
    assert first.status == "max_steps"
    run_training(tiny_config(synth_root, split, training__epochs=2, training__resume_from_checkpoint="auto",
                             **RECIPE))
    a, b = latest(straight), latest(split)
    assert a["ema"]["updates"] == b["ema"]["updates"] == a["global_step"]
    for name, get in (("model_raw", lambda s: s["model_raw"]), ("ema", lambda s: s["ema"]["module"]),
                      ("model", lambda s: s["model"])):
        assert get(a).keys() == get(b).keys()
        for key in get(a):
            assert torch.equal(get(a)[key], get(b)[key]), (name, key)
    # the averaged weights are what the checkpoint's "model" holds, and they differ from the live ones
    assert all(torch.equal(a["model"][k], a["ema"]["module"][k]) for k in a["model"])
    assert not all(torch.equal(a["model"][k], a["model_raw"][k]) for k in a["model"])


def test_best_model_carries_the_ema_weights_for_predict_and_export(recipe_run):
    out = recipe_run
    best = torch.load(out / "best_model.pth", weights_only=True)
    assert all(torch.equal(best["model"][k], best["ema"]["module"][k]) for k in best["model"])
    plain = load_export_source(out / "best_model.pth")
    averaged = load_export_source(out / "best_model.pth", ema=True)
    for (name, p), (_, q) in zip(plain.predictor.model.state_dict().items(),
                                 averaged.predictor.model.state_dict().items(), strict=False):
        assert torch.equal(p, q), name


def test_ohem_with_dice_and_lovasz_trains_and_validates_with_plain_ce(synth_root, tmp_path):
    out = tmp_path / "run"
    # The loss terms see logits and labels, whatever the model: TinyNet's are as good a test as DeepLab's.
    summary = run_training(tiny_config(synth_root, out, training__epochs=1, model=TINY_NET, training__loss__type="ohem",
                                       training__loss__ohem_min_kept=500, training__loss__dice_weight=0.5,
                                       training__loss__lovasz_weight=0.5))
    assert summary.status == "completed"
    record = json.loads((out / "history.json").read_text())[0]
    assert math.isfinite(record["train_loss"]) and math.isfinite(record["val_loss"])


@pytest.mark.parametrize("flags, precision", [({"avx2"}, "float32"), ({"avx2", "avx512_bf16"}, "autocast bfloat16")])
def test_amp_auto_follows_the_cpu_flags(monkeypatch, flags, precision):
    monkeypatch.setattr(amp_policy, "cpu_flags", lambda *_a: frozenset(flags))
    cfg = tiny_config(Path("/unused"), Path("/unused/out")).backend
    assert cfg.amp_dtype == "auto"
    lines: list[str] = []
    runtime = resolve_runtime(cfg, torch.device("cpu"), log=lines.append)
    assert runtime.amp == (precision != "float32") and not runtime.use_grad_scaler
    chosen = f"autocast {str(runtime.amp_dtype).removeprefix('torch.')}" if runtime.amp else "float32"
    assert chosen == precision  # what the start-up summary prints as "precision"
    if precision == "float32":
        assert any("amp_dtype auto chose float32" in line for line in lines)


def test_init_from_across_class_sets_loads_the_body_and_reinitialises_the_head(synth_root, tmp_path, capsys):
    cfg = tiny_config(synth_root, tmp_path / "run", training__epochs=1, training__max_steps=1)
    other = build_model(cfg.model, num_classes=5)  # another class set: the classifier's shape differs
    source = tmp_path / "pretrained.pth"
    torch.save(other.state_dict(), source)
    summary = run_training(tiny_config(synth_root, tmp_path / "run", training__epochs=1, training__max_steps=1,
                                       model__init_from=str(source)))
    assert summary.status == "max_steps"
    line = next(line for line in capsys.readouterr().out.splitlines() if "init_from" in line)
    loaded = int(line.split("loaded ")[1].split()[0])
    reinitialised = line.split("re-initialised (shape differs): ")[1].split(";")[0]
    assert loaded > 50 and reinitialised not in ("", "none")
    assert all(name.startswith(("classifier", "decoder", "head")) for name in reinitialised.split(", ")), line


def test_bn_gap_check_warns_when_running_statistics_are_stale(synth_root, tmp_path):
    from dist_seg.data.pipeline import load_datasets, prepare

    cfg = tiny_config(synth_root, tmp_path / "run")
    prepare(cfg, log=lambda _m: None, progress=False)
    data = load_datasets(cfg)
    model = build_model(cfg.model, cfg.dataset.num_classes).eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.fill_(5.0)  # statistics of very different activations
    runtime = resolve_runtime(cfg.backend, CPU.device, log=lambda _m: None)
    prep = BatchPreparer(CPU.device, runtime.memory_format, tuple(cfg.training.image_size))
    warnings: list[str] = []
    check_bn_gap(model, data.train, prep, runtime, CPU, 4, warnings.append)
    assert len(warnings) == 1 and "training.precise_bn_batches" in warnings[0]
