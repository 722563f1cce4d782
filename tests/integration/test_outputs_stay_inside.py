"""Outputs stay where the user said: never above --out, never in the dataset, never through a planted link."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import pytest
from support.helpers import save_model_checkpoint, tiny_raw_config

from dist_seg.config import config_from_dict
from dist_seg.errors import ConfigError
from dist_seg.evaluate import main as evaluate_main
from dist_seg.export import main as export_main
from dist_seg.models import build_model
from dist_seg.paths import NAME_MAX, open_for_append
from dist_seg.predict import main as predict_main
from dist_seg.train.run import run_training

TINY = "fixtures_custom_model:TinyNet"


@pytest.fixture(scope="module")
def checkpoint(synth_root, tmp_path_factory) -> Path:
    """An untrained TinyNet checkpoint in <run>/checkpoints/ whose embedded output_dir is somewhere else."""
    base = tmp_path_factory.mktemp("paths")
    raw = tiny_raw_config(synth_root, base / "stored_output_dir")
    raw["model"] = {"type": TINY}
    cfg = config_from_dict(raw)
    model = build_model(cfg.model, cfg.dataset.num_classes)
    return save_model_checkpoint(model, cfg, base / "run" / "checkpoints")


def predict(checkpoint: Path, *args: str) -> int:
    return predict_main(["--checkpoint", str(checkpoint), "--device", "cpu", "--custom-model", TINY, *args])


def test_an_input_named_dir_dotdot_is_written_below_out(checkpoint, synth_root, tmp_path):
    frames = tmp_path / "frames"
    shutil.copytree(synth_root / "Images" / "Video_000", frames)
    (frames / "sub").mkdir()
    out = tmp_path / "work" / "out"
    assert predict(checkpoint, str(frames / "sub" / ".."), "--out", str(out)) == 0
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == ["out"]
    assert len(list((out / "frames").glob("*_ids.png"))) == 8


@pytest.mark.parametrize("command", ["predict", "evaluate", "export"])
def test_an_empty_out_is_refused(command, checkpoint, synth_root, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = {"predict": ["--checkpoint", str(checkpoint), str(synth_root / "Images" / "Video_000")],
            "evaluate": ["--checkpoint", str(checkpoint), "--root", str(synth_root)],
            "export": ["--checkpoint", str(checkpoint), "--format", "torch-export"]}[command]
    main = {"predict": predict_main, "evaluate": evaluate_main, "export": export_main}[command]
    assert main([*args, "--out", "", "--custom-model", TINY]) == 1
    assert "error: --out is empty" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_outputs_inside_the_datasets_frame_or_label_folders_are_refused(checkpoint, synth_root, tmp_path, capsys):
    assert predict(checkpoint, str(synth_root), "--out", str(synth_root / "Images" / "preds")) == 1
    assert "is inside the dataset's Images/ folder" in capsys.readouterr().err
    assert not (synth_root / "Images" / "preds").exists()
    assert evaluate_main(["--checkpoint", str(checkpoint), "--root", str(synth_root), "--device", "cpu",
                          "--custom-model", TINY, "--out", str(tmp_path / "r"),
                          "--cache-dir", str(synth_root / "Labels" / "cache")]) == 1
    assert "--cache-dir: " in capsys.readouterr().err
    for section, key, inside in (("training", "output_dir", synth_root / "Labels" / "run"),
                                 ("dataset", "cache_dir", synth_root / "Images" / "cache")):
        raw = tiny_raw_config(synth_root, tmp_path / "run")
        raw[section][key] = str(inside)
        with pytest.raises(ConfigError, match=f"{section}.{key}.*is inside the dataset's (Images|Labels)/ folder"):
            run_training(config_from_dict(raw))
        assert not inside.exists()


def test_a_symlink_where_a_log_is_appended_is_refused(synth_root, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    out = tmp_path / "run"
    out.mkdir()
    os.symlink(victim, out / "memory_diagnostics.log")
    with pytest.raises(OSError) as raised:
        os.close(open_for_append(out / "memory_diagnostics.log"))
    assert raised.value.errno == errno.ELOOP and "symbolic link" in str(raised.value)
    raw = tiny_raw_config(synth_root, out)
    with pytest.raises(ConfigError, match="memory_diagnostics.log is a symbolic link"):
        run_training(config_from_dict(raw))
    assert victim.read_text() == "precious\n"


def test_evaluate_reports_next_to_the_checkpoint_not_where_the_checkpoint_says(checkpoint, synth_root, capsys):
    assert evaluate_main(["--checkpoint", str(checkpoint), "--root", str(synth_root), "--device", "cpu",
                          "--workers", "0", "--custom-model", TINY]) == 0
    report = checkpoint.parent.parent / "eval" / synth_root.name
    assert json.loads((report / "metrics.json").read_text())["frames"] == 32
    assert f"report: {report}/report.md" in capsys.readouterr().out
    assert not (checkpoint.parent.parent.parent / "stored_output_dir").exists()


def test_names_too_long_for_the_filesystem_are_shortened_before_the_model_loads(checkpoint, synth_root, tmp_path):
    frames = tmp_path / "frames"
    frames.mkdir()
    source = sorted((synth_root / "Images" / "Video_000").glob("*.png"))[0]
    long_a, long_b = "a" * 240 + "_1", "a" * 240 + "_2"  # the same first 240 bytes
    for stem in (long_a, long_b):
        shutil.copy(source, frames / f"{stem}.png")
    out = tmp_path / "out"
    assert predict(checkpoint, str(frames), "--out", str(out)) == 0
    written = sorted(p.name for p in (out / "frames").iterdir())
    assert len(written) == 6 and all(len(name.encode()) <= NAME_MAX - 64 for name in written)
    assert len({name.split("_ids")[0] for name in written if "_ids" in name}) == 2
