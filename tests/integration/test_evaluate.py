"""``dist_seg.evaluate`` end to end: real PNGs, a real checkpoint, real report files, real torchrun ranks."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from support.helpers import PYTHON, REPO_ROOT, save_model_checkpoint, tiny_raw_config
from support.torchrun import launch_env

from dist_seg.config import config_from_dict, config_to_dict
from dist_seg.data.discovery import discover
from dist_seg.data.native_masks import FrameSequence, ensure_native_masks
from dist_seg.data.pipeline import prepare
from dist_seg.eval.inference import MEAN, STD
from dist_seg.eval.metrics import frequency_weighted_iou
from dist_seg.eval.native import shard_by_sequence
from dist_seg.evaluate import main as evaluate_main
from dist_seg.models import build_model
from dist_seg.synth import generate_dataset

NATIVE = (30, 40)  # frame size on disk
NETWORK = (16, 24)  # training.image_size: smaller, and another aspect ratio
CUSTOM = "fixtures_custom_model:LinearPixelNet"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A prepared dataset (3 sequences of 6 frames), a checkpoint and the config it was trained with."""
    base = tmp_path_factory.mktemp("evaluate")
    root = base / "data"
    generate_dataset(root, sequences=3, frames=6, size=NATIVE, seed=11)
    raw = tiny_raw_config(root, base / "run", cache_dir=base / "cache")
    raw["dataset"]["void_class"] = "void"
    raw["dataset"]["split"] = {"val": ["Video_001"], "test": ["Video_002"]}
    raw["model"] = {"type": CUSTOM}
    raw["training"]["image_size"] = list(NETWORK)
    cfg = config_from_dict(raw)
    prepare(cfg, log=lambda _m: None, progress=False)
    torch.manual_seed(5)
    model = build_model(cfg.model, cfg.dataset.num_classes)
    with torch.no_grad():  # lean on the colours a little so that some classes are right
        model.classifier.weight.mul_(4)
    ckpt = save_model_checkpoint(model, cfg, base / "run" / "checkpoints")
    return {"base": base, "root": root, "cfg": cfg, "raw": raw, "ckpt": ckpt, "model": model.eval()}


def evaluate(*args: str) -> int:
    return evaluate_main([*args, "--device", "cpu", "--workers", "0", "--custom-model", CUSTOM])


def direct_predictions(model, cfg, frames):
    """Labels and ids straight from the PNGs: PIL resize (as the cache resizes), own normalisation, own colour lookup."""
    colour_to_id = {tuple(c.color): i for i, c in enumerate(cfg.dataset.classes)}
    void = cfg.dataset.void_index
    preds, targets = [], []
    for image_path in frames:
        rgb = np.array(Image.open(image_path).convert("RGB"))
        resized = np.asarray(Image.fromarray(rgb).resize(NETWORK[::-1], Image.BILINEAR))
        x = torch.from_numpy(resized.copy()).permute(2, 0, 1)[None].float()
        x = (x - torch.tensor(MEAN).view(1, 3, 1, 1) * 255) / (torch.tensor(STD).view(1, 3, 1, 1) * 255)
        with torch.no_grad():
            logits = model(x)["out"]
        logits = F.interpolate(logits, size=rgb.shape[:2], mode="bilinear", align_corners=False)
        preds.append(logits.argmax(1)[0].numpy())
        mask = np.asarray(Image.open(Path(str(image_path).replace("/Images/", "/Labels/"))).convert("RGB"))
        ids = np.full(mask.shape[:2], 255, dtype=np.int64)
        for colour, cid in colour_to_id.items():
            ids[(mask == colour).all(-1)] = 255 if cid == void else cid
        targets.append(ids)
    return preds, targets


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def test_native_resolution_scores_equal_a_direct_computation_from_the_pngs(run, capsys):
    out = run["base"] / "report_test"
    assert evaluate("--checkpoint", str(run["ckpt"]), "--split", "test", "--out", str(out)) == 0
    printed = capsys.readouterr().out
    assert "| mIoU |" in printed and "| Video_002 | 6 |" in printed

    frames = sorted((run["root"] / "Images" / "Video_002").glob("*.png"))
    preds, targets = direct_predictions(run["model"], run["cfg"], frames)
    classes = run["cfg"].dataset.num_classes
    confusion = np.zeros((classes, classes), dtype=np.int64)
    for p, t in zip(preds, targets, strict=False):
        valid = t != 255
        confusion += np.bincount(t[valid] * classes + p[valid], minlength=classes ** 2).reshape(classes, classes)
    assert confusion.sum() > 0 and np.trace(confusion) > 0
    report = read_json(out / "metrics.json")
    assert np.array_equal(np.array(report["confusion"]), confusion)
    assert report["frames"] == 6 and report["source"].startswith("split test of")
    tp = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - tp
    void = run["cfg"].dataset.void_index
    scored = [i for i in range(classes) if union[i] > 0 and i != void]
    assert report["mean_iou"] == pytest.approx(np.mean(tp[scored] / union[scored]))
    assert report["pixel_acc"] == pytest.approx(tp.sum() / confusion.sum())
    assert report["fw_iou"] == pytest.approx(frequency_weighted_iou(confusion, void))

    # Flicker straight from the predictions: static labels between consecutive frames whose prediction changes.
    static = changed = 0
    for t in range(1, len(frames)):
        same = (targets[t] == targets[t - 1]) & (targets[t] != 255)
        static += int(same.sum())
        changed += int((same & (preds[t] != preds[t - 1])).sum())
    assert report["flicker"] == pytest.approx(changed / static)
    assert report["sequences"]["Video_002"]["static_pixels"] == static
    assert report["vc"]["2"] is not None and report["vc"]["8"] is None  # 6 frames: no window of 8

    # The CSV is the same matrix with class names; the picture is a real PNG with a cell per class pair.
    with open(out / "confusion.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0][1:] == run["cfg"].dataset.class_names
    assert np.array_equal(np.array([[int(v) for v in r[1:]] for r in rows[1:]]), confusion)
    with Image.open(out / "confusion.png") as picture:
        assert picture.width > classes * 30 and picture.height > classes * 30
    assert "VC_2" in (out / "report.md").read_text()


def test_the_second_evaluation_decodes_no_mask(run, capsys):
    args = ["--checkpoint", str(run["ckpt"]), "--split", "val", "--out", str(run["base"] / "report_val")]
    assert evaluate(*args) == 0
    first = read_json(run["base"] / "report_val" / "metrics.json")
    assert evaluate(*args) == 0
    assert "native masks: decoding" not in capsys.readouterr().out.split("evaluate: split val")[-1]
    listing = discover(run["root"], run["cfg"].dataset).sequences[1]
    seq = FrameSequence(listing.name, run["root"], listing.frames)
    outcome = ensure_native_masks([seq], run["cfg"], log=lambda _m: None, progress=False)
    assert outcome.reused == ["Video_001"] and outcome.built == []
    assert read_json(run["base"] / "report_val" / "metrics.json")["confusion"] == first["confusion"]
    # A touched mask makes its sequence stale again.
    mask = sorted((run["root"] / "Labels" / "Video_001").glob("*.png"))[0]
    mask.touch()
    assert ensure_native_masks([seq], run["cfg"], log=lambda _m: None, progress=False).built == ["Video_001"]


def test_tta_and_sliding_window_are_reported(run, capsys):
    out = run["base"] / "report_tta"
    assert evaluate("--checkpoint", str(run["ckpt"]), "--split", "test", "--out", str(out),
                    "--tta", "flip,scales=0.75,1.0", "--mode", "slide", "--crop", "16x24", "--stride", "10x16") == 0
    report = read_json(out / "metrics.json")
    described = "slide crop 16x24 stride 10x16, flip, scales 0.75,1, precision fp32"
    assert report["inference"] == described
    assert described in (out / "report.md").read_text()
    printed = capsys.readouterr().out
    assert f"frames, {described}, 1 process(es)" in printed and "evaluate: precision fp32 (the CPU default" in printed
    assert 0 < report["mean_iou"] <= 1 and report["frames"] == 6


def test_root_with_index_masks_equals_the_same_data_with_rgb_masks(run, tmp_path):
    index_root = tmp_path / "index"
    generate_dataset(index_root, sequences=3, frames=6, size=NATIVE, seed=11, mask_format="index")
    rgb_out, index_out = tmp_path / "rgb_report", tmp_path / "index_report"
    assert evaluate("--checkpoint", str(run["ckpt"]), "--root", str(run["root"]), "--out", str(rgb_out)) == 0
    assert evaluate("--checkpoint", str(run["ckpt"]), "--root", str(index_root), "--out", str(index_out),
                    "--cache-dir", str(tmp_path / "cache"), "--mask-format", "index") == 0
    rgb, index = read_json(rgb_out / "metrics.json"), read_json(index_out / "metrics.json")
    assert (rgb["mask_format"], index["mask_format"]) == ("rgb", "index")
    assert rgb["frames"] == index["frames"] == 18
    assert rgb["confusion"] == index["confusion"] and rgb["vc"] == index["vc"]
    assert set(rgb["sequences"]) == {"Video_000", "Video_001", "Video_002"}


def test_a_corrupt_frame_is_named(run, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(run["root"], broken)
    victim = sorted((broken / "Labels" / "Video_000").glob("*.png"))[2]
    victim.write_bytes(victim.read_bytes()[:60])
    assert evaluate("--checkpoint", str(run["ckpt"]), "--root", str(broken), "--out", str(tmp_path / "o"),
                    "--cache-dir", str(tmp_path / "cache")) == 1
    err = capsys.readouterr().err
    assert str(victim) in err and "cannot read mask" in err
    assert not (tmp_path / "o").exists()


def test_a_checkpoint_of_another_class_set_is_refused_naming_it(run, tmp_path, capsys):
    raw = json.loads(json.dumps(run["raw"]))
    raw["dataset"]["classes"] = [c for c in config_to_dict(run["cfg"])["dataset"]["classes"] if c["name"] != "wall"]
    config = tmp_path / "other.yaml"
    config.write_text(json.dumps(raw))
    assert evaluate("--checkpoint", str(run["ckpt"]), str(config), "--out", str(tmp_path / "o")) == 1
    err = capsys.readouterr().err
    assert f"checkpoint {run['ckpt']} was trained on 13 classes" in err and "defines 12" in err


def test_sharding_takes_whole_sequences_and_balances_frames():
    seqs = [FrameSequence(name, Path("."), tuple(range(n))) for name, n in (("a", 5), ("b", 9), ("c", 4), ("d", 3))]
    shards = [shard_by_sequence(seqs, r, 2) for r in range(2)]
    # Longest first to the least-loaded rank: b(9) -> 0, a(5) -> 1, c(4) -> 1, d(3) -> 0 (tie: 9 vs 9).
    assert [[s.name for s in shard] for shard in shards] == [["b", "d"], ["a", "c"]]
    assert sorted(s.name for shard in shards for s in shard) == ["a", "b", "c", "d"]
    assert [s.name for s in shard_by_sequence(seqs, 4, 5)] == []


@pytest.mark.slow
@pytest.mark.distributed
def test_two_ranks_equal_one(run, tmp_path):
    env = launch_env()
    common = ["-m", "dist_seg.evaluate", "--checkpoint", str(run["ckpt"]), "--root", str(run["root"]),
              "--device", "cpu", "--workers", "0", "--batch-size", "4", "--tta", "flip", "--custom-model", CUSTOM]
    one = subprocess.run([PYTHON, *common, "--out", str(tmp_path / "one")], cwd=REPO_ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *common,
                          "--out", str(tmp_path / "two")], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert two.returncode == 0, (two.stdout + two.stderr)[-3000:]
    a, b = read_json(tmp_path / "one" / "metrics.json"), read_json(tmp_path / "two" / "metrics.json")
    assert (a["world_size"], b["world_size"]) == (1, 2)
    for key in ("confusion", "frames", "mean_iou", "pixel_acc", "fw_iou", "iou", "vc", "flicker", "sequences"):
        assert a[key] == b[key], key
