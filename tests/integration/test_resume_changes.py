"""Resuming with a changed config: harmless changes apply and are listed, changes that would train something
else are refused (unless training.resume_force), and damaged or foreign checkpoint state is a clear error.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from support.helpers import TINY_NET, tiny_config, tiny_run

from dist_seg.config.classes import DAVID_CLASSES
from dist_seg.errors import CheckpointError
from dist_seg.train.run import run_training

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained_once(synth_root, tmp_path_factory) -> Path:
    """A finished one-epoch TinyNet run (val = Video_003) in ``run/``, its cache in ``run_cache/``."""
    base = tmp_path_factory.mktemp("trained")
    run_training(tiny_run(synth_root, base / "run", training__epochs=1))
    return base


@pytest.fixture
def trained(trained_once, tmp_path) -> Path:
    """This test's own copy of :func:`trained_once`'s run and cache (resumes change them): one training, many tests."""
    for name in ("run", "run_cache"):
        shutil.copytree(trained_once / name, tmp_path / name)
    return tmp_path / "run"


def resume(synth_root, out: Path, **overrides):
    return run_training(tiny_run(synth_root, out, training__resume_from_checkpoint="auto", **overrides))


def test_resume_applies_new_optimizer_settings_and_says_so(synth_root, trained, capsys):
    resume(synth_root, trained, training__epochs=2, training__learning_rate=0.004, training__weight_decay=0.01,
           training__lr_schedule="constant")
    log = capsys.readouterr().out
    assert "training.learning_rate 0.002 -> 0.004" in log and "training.weight_decay 0.0001 -> 0.01" in log
    history = json.loads((trained / "history.json").read_text())
    last = history[-1] if isinstance(history, list) else history["epochs"][-1]
    assert last["lr"] == pytest.approx(0.004)
    state = torch.load(trained / "checkpoints" / "epoch_0002.pth", weights_only=True)
    assert {g["weight_decay"] for g in state["optimizer"]["param_groups"]} == {0.01}  # not the checkpoint's 1e-4
    assert yaml.safe_load((trained / "config.yaml").read_text())["training"]["weight_decay"] == 0.01


@pytest.mark.parametrize("change, message", [
    ({"dataset__classes": [{"name": c.name, "color": list(c.color)} for c in reversed(DAVID_CLASSES)]},
     "dataset.classes"),
    ({"model": {"type": "fixtures_custom_model:LinearPixelNet"}}, "model.type 'fixtures_custom_model:TinyNet' -> "),
    ({"training__optimizer": "sgd"}, "training.optimizer 'adamw' -> 'sgd'"),
    ({"dataset__split__val": ["Video_000"]}, "Video_000 were trained on but are now in the validation"),
    ({"dataset__split__val": [], "dataset__split__test": ["Video_001"]}, "Video_001 were trained on"),
])
def test_resume_refuses_changes_that_train_something_else(synth_root, trained, change, message):
    before = sorted(p.name for p in (trained / "checkpoints").iterdir())
    with pytest.raises(CheckpointError, match=message) as err:
        resume(synth_root, trained, training__epochs=2, **change)
    assert "training.resume_force: true" in str(err.value)
    assert sorted(p.name for p in (trained / "checkpoints").iterdir()) == before


def test_resume_with_a_custom_model_key_that_changes_the_weights_is_refused(synth_root, trained, capsys):
    with pytest.raises(CheckpointError, match="does not fit the configured model"):
        resume(synth_root, trained, training__epochs=2, model={**TINY_NET, "width": 16})
    assert "applies model.width (unset) -> 16" in capsys.readouterr().out


@pytest.mark.parametrize("change", [
    {"dataset__classes": [{"name": c.name, "color": list(c.color)} for c in reversed(DAVID_CLASSES)]},
    {"training__optimizer": "sgd"},
    {"dataset__split__val": ["Video_000"]},
])
def test_resume_force_overrides_a_refusal_with_a_warning(synth_root, trained, change, capsys):
    summary = resume(synth_root, trained, training__epochs=2, training__resume_force=True, **change)
    assert summary.epochs_completed == 2
    assert "training.resume_force: resuming despite" in capsys.readouterr().err


@pytest.mark.parametrize("drop, message", [("optimizer", "holds no optimizer state"),
                                           ("position", "lacks position")])
def test_resume_from_a_checkpoint_missing_state_is_a_clear_error(synth_root, trained, tmp_path, drop, message):
    state = torch.load(trained / "checkpoints" / "epoch_0001.pth", weights_only=True)
    del state[drop]
    partial = tmp_path / "partial.pth"
    torch.save(state, partial)
    with pytest.raises(CheckpointError, match=message):
        run_training(tiny_run(synth_root, tmp_path / "b", training__epochs=2,
                              training__resume_from_checkpoint=str(partial)))


def test_resume_with_another_optimizers_state_is_a_clear_error(synth_root, trained, tmp_path):
    # The checkpoint claims adamw but holds a state with a parameter group too many.
    state = torch.load(trained / "checkpoints" / "epoch_0001.pth", weights_only=True)
    state["optimizer"]["param_groups"].append(dict(state["optimizer"]["param_groups"][0], params=[99]))
    odd = tmp_path / "odd.pth"
    torch.save(state, odd)
    with pytest.raises(CheckpointError, match="optimizer state does not fit"):
        run_training(tiny_run(synth_root, tmp_path / "b", training__epochs=2, training__resume_from_checkpoint=str(odd)))


def _copy_sequence(root: Path, name: str, dest: Path) -> Path:
    """``dest``: a dataset root holding only sequence ``name`` of ``root`` (every top-level folder's copy)."""
    for folder in root.iterdir():
        if (folder / name).is_dir():
            shutil.copytree(folder / name, dest / folder.name / name)
    return dest


def test_resume_with_a_test_root_whose_sequences_share_training_names(synth_root, tmp_path):
    """A separate test root may reuse sequence names (Video_000 ...): another dataset, not a leak into test."""
    from dist_seg.train.run import run_training

    out = tmp_path / "run"
    test_root = _copy_sequence(synth_root, "Video_000", tmp_path / "test_root")
    settings = {"model": {"type": "fixtures_custom_model:TinyNet"}, "dataset__test_root": str(test_root),
                "dataset__split": {"val": ["Video_003"]}}
    run_training(tiny_config(synth_root, out, training__epochs=1, **settings))
    summary = run_training(tiny_config(synth_root, out, training__epochs=2, training__resume_from_checkpoint="auto",
                                       **settings))
    assert summary.status == "completed" and summary.epochs_completed == 2
