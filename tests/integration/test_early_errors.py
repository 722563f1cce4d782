"""Wrong input found first: all-void labels before any cache, export opsets and evaluate bounds before the
model loads, SIGHUP stopping a run like SIGTERM."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from support.helpers import tiny_config, tiny_raw_config

from dist_seg.checkpoint_file import list_checkpoints
from dist_seg.errors import DataError
from dist_seg.evaluate import main as evaluate_main
from dist_seg.export import main as export_main
from dist_seg.synth import generate_dataset
from dist_seg.train.run import run_training
from dist_seg.validate import main as validate_main


@pytest.fixture
def all_void(tmp_path) -> Path:
    """A small dataset whose every mask is black: the void class of the DAVID palette (with dataset.void_class)."""
    root = tmp_path / "data"
    generate_dataset(root, sequences=3, frames=4, size=(32, 32), seed=1)
    for mask in (root / "Labels").rglob("*.png"):
        Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(mask)
    return root


def test_all_void_training_labels_are_refused_before_any_cache_or_split(all_void, tmp_path, capsys):
    raw = tiny_raw_config(all_void, tmp_path / "run", cache_dir=tmp_path / "cache")
    raw["dataset"].update(split={"val": ["Video_002"], "test": []}, void_class="void")
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(raw))
    assert validate_main([str(config)]) == 1
    assert "every pixel of the 8 training masks is the void class 'void' or ignored" in capsys.readouterr().out
    with pytest.raises(DataError, match="every pixel of the 8 training masks is the void class"):
        run_training(tiny_config(all_void, tmp_path / "run", dataset__cache_dir=str(tmp_path / "cache"),
                                 dataset__split={"val": ["Video_002"], "test": []}, dataset__void_class="void"))
    assert not (tmp_path / "cache").exists() and not (tmp_path / "run" / "splits.json").exists()


def test_an_opset_torch_cannot_write_is_refused_before_the_checkpoint_is_read(tmp_path, capsys):
    assert export_main(["--checkpoint", str(tmp_path / "none.pth"), "--format", "onnx", "--opset", "99",
                        "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "--opset 99: torch" in err and "exports ONNX opsets 7 to 23" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("options, message", [
    (["--workers", "5000"], "--workers must be from 0 to"),
    (["--mode", "slide", "--crop", "8x8"], "each side must be at least 16 pixels"),
    (["--mode", "slide", "--crop", "64x64", "--stride", "2x2"], "is under 1/8 of the slide window 64x64"),
    (["--tta", "scales=0.1,1.0"], "from 0.25 to 4"),
])
def test_evaluate_settings_out_of_bounds_are_refused_up_front(options, message, tmp_path, capsys):
    try:
        status = evaluate_main(["--checkpoint", str(tmp_path / "none.pth"), "--root", str(tmp_path), *options])
    except SystemExit as exit_:  # argparse's own usage error
        status = exit_.code
    assert status in (1, 2)
    assert message in capsys.readouterr().err


def test_sighup_stops_training_with_a_checkpoint_like_sigterm(synth_root, tmp_path, capsys):
    out = tmp_path / "run"
    model = {"type": "fixtures_custom_model:SignalAt", "call": 4, "signal_name": "SIGHUP"}
    summary = run_training(tiny_config(synth_root, out, model=model))
    assert summary.status == "preempted"
    assert [c.path.name for c in list_checkpoints(out / "checkpoints")] == ["epoch_0001_batch_000004.pth"]
    assert "stopped on SIGHUP at epoch 1, batch 4" in capsys.readouterr().out
