"""A checkpoint is data: predict / evaluate / export / init_from / resume never import a module it names.

A custom model is rebuilt only from the import path the user gives (``--custom-model`` or
their own config); a checkpoint that names one says how to pass it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from support.helpers import save_model_checkpoint, tiny_raw_config

from dist_seg.config import config_from_dict, config_to_dict
from dist_seg.evaluate import main as evaluate_main
from dist_seg.export import main as export_main
from dist_seg.models import build_model
from dist_seg.predict import main as predict_main
from dist_seg.train.run import run_training

TRIPWIRE = "tripwire_model"  # tests/support/tripwire_model.py: importable, and must stay unimported
NAMED_INSIDE = f"{TRIPWIRE}:TinyNet"
TRUSTED = "fixtures_custom_model:TinyNet"


@pytest.fixture
def untouched(monkeypatch):
    """Forget any earlier import of the tripwire; the test then asserts nothing imported it."""
    monkeypatch.delitem(sys.modules, TRIPWIRE, raising=False)
    yield
    assert TRIPWIRE not in sys.modules, "a module named only by a checkpoint was imported"


@pytest.fixture(scope="module")
def foreign(synth_root, tmp_path_factory) -> Path:
    """A real checkpoint of a TinyNet whose embedded config names the tripwire module as model.type."""
    base = tmp_path_factory.mktemp("foreign")
    raw = tiny_raw_config(synth_root, base / "run")
    raw["model"] = {"type": TRUSTED}
    cfg = config_from_dict(raw)
    model = build_model(cfg.model, cfg.dataset.num_classes)
    embedded = config_to_dict(cfg)
    embedded["model"]["type"] = NAMED_INSIDE
    return save_model_checkpoint(model, cfg, base / "run" / "checkpoints", global_step=8, config=embedded)


def _frame(synth_root: Path) -> str:
    return str(sorted((synth_root / "Images" / "Video_000").glob("*.png"))[0])


def _commands(checkpoint: Path, synth_root: Path, out: Path) -> dict[str, list[str]]:
    return {
        "predict": ["--checkpoint", str(checkpoint), _frame(synth_root), "--out", str(out), "--device", "cpu"],
        "evaluate": ["--checkpoint", str(checkpoint), "--root", str(synth_root), "--out", str(out), "--device",
                     "cpu", "--workers", "0"],
        "export": ["--checkpoint", str(checkpoint), "--format", "torch-export", "--no-check", "--out", str(out)],
    }


MAINS = {"predict": predict_main, "evaluate": evaluate_main, "export": export_main}


@pytest.mark.parametrize("command", sorted(MAINS))
def test_a_model_named_only_by_the_checkpoint_is_refused_with_the_option_to_pass(
        command, foreign, synth_root, tmp_path, capsys, untouched):
    args = _commands(foreign, synth_root, tmp_path / "out")[command]
    assert MAINS[command](args) == 1
    err = capsys.readouterr().err
    assert f"holds a custom model ('{NAMED_INSIDE}')" in err and f"--custom-model {NAMED_INSIDE}" in err, err


@pytest.mark.parametrize("command", sorted(MAINS))
def test_the_users_import_path_rebuilds_the_custom_model(command, foreign, synth_root, tmp_path, untouched):
    args = _commands(foreign, synth_root, tmp_path / "out")[command]
    assert MAINS[command]([*args, "--custom-model", TRUSTED]) == 0
    assert any((tmp_path / "out").rglob("*"))


def test_custom_model_option_on_a_built_in_checkpoint_is_refused(synth_root, tmp_path, capsys):
    raw = tiny_raw_config(synth_root, tmp_path / "run")
    raw["model"] = {"type": "lraspp", "backbone": "mobilenet_v3_large"}
    cfg = config_from_dict(raw)
    model = build_model(cfg.model, cfg.dataset.num_classes)
    ckpt = save_model_checkpoint(model, cfg, tmp_path)
    args = _commands(ckpt, synth_root, tmp_path / "out")["predict"]
    assert predict_main([*args, "--custom-model", TRUSTED]) == 1
    assert "holds the built-in model 'lraspp'" in capsys.readouterr().err


def test_init_from_a_foreign_checkpoint_never_imports_its_model(foreign, synth_root, tmp_path, untouched):
    raw = tiny_raw_config(synth_root, tmp_path / "run")
    raw["model"] = {"type": TRUSTED, "init_from": str(foreign)}
    raw["training"].update(epochs=1, max_steps=1)
    run_training(config_from_dict(raw))


def test_resuming_from_a_checkpoint_that_names_another_module_never_imports_it(synth_root, tmp_path, untouched):
    raw = tiny_raw_config(synth_root, tmp_path / "run")
    raw["model"] = {"type": TRUSTED}
    raw["training"].update(epochs=1, max_steps=2)
    run_training(config_from_dict(raw))
    latest = sorted((tmp_path / "run" / "checkpoints").glob("epoch_*.pth"))[-1]
    state = torch.load(latest, weights_only=True)
    state["config"]["model"]["type"] = NAMED_INSIDE
    torch.save(state, latest)
    raw["training"].update(epochs=2, max_steps=3, resume_from_checkpoint=str(latest), resume_force=True)
    assert run_training(config_from_dict(raw)).global_step == 3
