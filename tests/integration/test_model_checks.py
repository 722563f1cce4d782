"""Model building, pre-flight and config checks: each mistake is one clear line, found before the data work.

A batch of one against BatchNorm, custom model modules and forwards that raise, split
settings and batch sizes the data cannot satisfy, out-of-memory batches, and what
``python -m dist_seg.validate`` reports without preparing anything.
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import pytest
from support.helpers import nothing_prepared, run_module, subprocess_env, tiny_raw_config, tiny_run, write_config

from dist_seg import validate
from dist_seg.config import ModelConfig
from dist_seg.errors import CheckpointError, ConfigError, DataError
from dist_seg.models import build_model, check_model_config
from dist_seg.train.run import run_training

pytestmark = pytest.mark.slow

FIXTURES = "faulty_models"


# ----------------------------------------------------------------------------- a batch of one


@pytest.mark.parametrize("model", [
    {"type": "deeplabv3plus", "backbone": "resnet18"},
    {"type": "deeplabv3", "backbone": "resnet50"},
    {"type": f"{FIXTURES}:PooledBatchNorm"},
])
def test_a_batch_of_one_against_pooled_batchnorm_is_refused_before_the_cache_build(synth_root, tmp_path, model):
    cfg = tiny_run(synth_root, tmp_path / "run", model=model, training__batch_size=1)
    with pytest.raises(ConfigError, match="training.batch_size: 1 cannot train .*its BatchNorm needs at least 2 "
                                          "samples per rank in training mode.*use training.batch_size >= 2"):
        run_training(cfg)
    assert nothing_prepared(cfg)


def test_a_batch_of_one_still_trains_a_model_whose_batchnorm_sees_whole_feature_maps(synth_root, tmp_path):
    cfg = tiny_run(synth_root, tmp_path / "run", model={"type": f"{FIXTURES}:SpatialBatchNorm"},
                   training__batch_size=1, training__epochs=1, training__max_steps=3)
    assert run_training(cfg).global_step == 3


# ----------------------------------------------------------------------------- custom model modules


@pytest.mark.parametrize("source, raised", [
    ("def forward(:\n    pass\n", r"raised SyntaxError: .*badmod\.py, line 1"),
    ("import torch\nWIDTH = undefined_width\n", r"raised NameError: name 'undefined_width' is not defined at .*badmod\.py:2"),
    ("raise RuntimeError('needs a GPU')\n", r"raised RuntimeError: needs a GPU at .*badmod\.py:1"),
])
def test_a_custom_module_that_fails_to_import_is_one_line(tmp_path, monkeypatch, source, raised):
    (tmp_path / "badmod.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "badmod", raising=False)
    pattern = "model.type: importing module 'badmod' for 'badmod:Net' " + raised + ".*fix the module"
    with pytest.raises(ConfigError, match=pattern):
        check_model_config(ModelConfig(type="badmod:Net"), 3)
    with pytest.raises(ConfigError, match=pattern):
        build_model(ModelConfig(type="badmod:Net"), 3)


def test_a_relative_module_path_is_named():
    with pytest.raises(ConfigError, match=r"model.type: '\.mod:Net' names a relative module; write the absolute"):
        check_model_config(ModelConfig(type=".mod:Net"), 3)


def test_import_failure_is_one_line_in_validate_and_train_with_the_traceback_under_debug(synth_root, tmp_path):
    (tmp_path / "badmod.py").write_text("def forward(:\n    pass\n")
    raw = tiny_raw_config(synth_root, tmp_path / "run")
    raw["model"] = {"type": "badmod:Net"}
    config = write_config(tmp_path / "c.yaml", raw)
    env = {**subprocess_env(), "PYTHONPATH": f"{tmp_path}:{subprocess_env()['PYTHONPATH']}"}
    for module in ("dist_seg.validate", "dist_seg.train"):
        proc = run_module(module, str(config), env=env)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        assert "importing module 'badmod' for 'badmod:Net' raised SyntaxError" in proc.stdout + proc.stderr
    debug = run_module("dist_seg.train", str(config), "--debug", env=env)
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "raised SyntaxError" in debug.stderr


@pytest.mark.parametrize("error", ["ValueError", "AssertionError", "TypeError"])
def test_a_custom_forward_that_raises_is_named_before_the_cache_build(synth_root, tmp_path, error):
    cfg = tiny_run(synth_root, tmp_path / "run", model={"type": f"{FIXTURES}:ForwardRaises", "error": error})
    with pytest.raises(ConfigError, match=rf"model.type: {FIXTURES}:ForwardRaises fails on a \[1, 3, 48, 64\] "
                                          rf"input: {error}: features and skip connection differ in size at "
                                          rf".*{FIXTURES}\.py:\d+; fix the model's forward"):
        run_training(cfg)
    assert nothing_prepared(cfg)


def test_a_custom_model_with_nothing_to_train_is_named_before_the_cache_build(synth_root, tmp_path):
    cfg = tiny_run(synth_root, tmp_path / "run", model={"type": f"{FIXTURES}:Frozen"})
    with pytest.raises(ConfigError, match=f"model.type: {FIXTURES}:Frozen has no trainable parameters"):
        run_training(cfg)
    assert nothing_prepared(cfg)


# ----------------------------------------------------------------------------- late split and batch checks


@pytest.mark.parametrize("overrides, error, message", [
    ({"dataset__split__val": ["Video_000", "Video_001"], "dataset__split__test": ["Video_002", "Video_003"]},
     ConfigError, "dataset.split: the named val/test lists leave no sequence for training"),
    ({"dataset__split__test": ["Video_002"], "dataset__test_root": "TEST_ROOT"},
     ConfigError, "dataset.split.test and dataset.test_root both choose the test split"),
    ({"training__batch_size": 25}, DataError,
     r"the training split has 24 frames, fewer than one optimizer step needs \(training.batch_size 25 x 1"),
    ({"training__batch_size": 8, "training__grad_accum_steps": 4}, DataError,
     r"fewer than one optimizer step needs .* training.grad_accum_steps 4 = 32"),
])
def test_split_and_batch_mistakes_are_caught_before_the_cache_build(synth_root, tmp_path, overrides, error,
                                                                     message):
    if "TEST_ROOT" in overrides.values():  # a separate test set (the training root itself is refused as one)
        test_root = shutil.copytree(synth_root, tmp_path / "test_root")
        overrides = {k: (str(test_root) if v == "TEST_ROOT" else v) for k, v in overrides.items()}
    cfg = tiny_run(synth_root, tmp_path / "run", **overrides)
    with pytest.raises(error, match=message):
        run_training(cfg)
    assert nothing_prepared(cfg)


# ----------------------------------------------------------------------------- out of memory


def test_a_training_batch_that_runs_out_of_memory_names_training_batch_size(synth_root, tmp_path):
    cfg = tiny_run(synth_root, tmp_path / "run", model={"type": f"{FIXTURES}:OutOfMemoryInTraining"})
    with pytest.raises(ConfigError, match=r"training.batch_size 4: a training step of 4 samples of 48x64 does not "
                                          r"fit in memory on cpu \(.*can't allocate memory.*\); lower "
                                          r"training.batch_size \(raise training.grad_accum_steps"):
        run_training(cfg)


def test_a_validation_batch_that_runs_out_of_memory_names_val_batch_size(synth_root, tmp_path):
    cfg = tiny_run(synth_root, tmp_path / "run", model={"type": f"{FIXTURES}:OutOfMemoryInValidation"},
                   training__epochs=1)
    with pytest.raises(ConfigError, match=r"training.val_batch_size 4: a validation batch does not fit in memory "
                                          r"on cpu \(CUDA out of memory.*\); lower training.val_batch_size"):
        run_training(cfg)


# ----------------------------------------------------------------------------- validate


def _garbage(path: Path) -> Path:
    path.write_bytes(b"not a torch file at all")
    return path


def _validate_cases(tmp_path: Path, synth_root: Path) -> list[tuple[dict, str]]:
    (tmp_path / "a_file").write_text("x")
    return [
        ({"dataset": {"split": {"val": ["Video_000", "Video_001"], "test": ["Video_002", "Video_003"]}}},
         "leave no sequence for training"),
        ({"dataset": {"split": {"val": ["Video_003"], "test": ["Video_002"]},
                      "test_root": str(shutil.copytree(synth_root, tmp_path / "test_root"))}},
         "dataset.split.test and dataset.test_root both choose the test split"),
        ({"training": {"output_dir": str(tmp_path / "a_file")}}, "training.output_dir: .*a_file is a file"),
        ({"training": {"output_dir": str(tmp_path / "a_file" / "run")}},
         "training.output_dir: cannot write to .*a_file is a file, not a folder"),
        ({"training": {"resume_from_checkpoint": str(tmp_path / "nope.pth")}},
         "training.resume_from_checkpoint: .*nope.pth does not exist"),
        ({"training": {"resume_from_checkpoint": str(_garbage(tmp_path / "garbage.pth"))}},
         "training.resume_from_checkpoint: .*garbage.pth is not a checkpoint"),
        ({"model": {"init_from": str(tmp_path / "missing.pth")}}, "model.init_from: file .*missing.pth does not exist"),
        ({"model": {"init_from": str(_garbage(tmp_path / "garbage_init.pth"))}},
         "model.init_from: cannot read .*garbage_init.pth as a torch weights file"),
        ({"model": {"type": "misshapen_models:RaisesInInit"}}, "raised KeyError: 'pretrained_path'"),
        ({"model": {"type": "misshapen_models:WrongClassCount"}}, r"logits of shape \[1, 14, 48, 64\]"),
        ({"model": {"type": f"{FIXTURES}:ForwardRaises"}}, "fails on a .*ValueError"),
        ({"model": {"type": f"{FIXTURES}:Frozen"}}, "has no trainable parameters"),
        ({"training": {"batch_size": 25}}, "the training split has 24 frames, fewer than one optimizer step"),
        ({"training": {"batch_size": 1}}, "training.batch_size: 1 cannot train deeplabv3plus with backbone resnet18"),
    ]


def test_validate_reports_every_mistake_training_would_refuse(synth_root, tmp_path, capsys):
    for i, (changes, message) in enumerate(_validate_cases(tmp_path, synth_root)):
        raw = tiny_raw_config(synth_root, tmp_path / "run")
        raw["dataset"]["cache_workers"] = 1  # no process pool for 32 frames
        for section, values in changes.items():
            raw[section].update(values)
        status = validate.main([str(write_config(tmp_path / f"c{i}.yaml", raw))])
        out = capsys.readouterr().out
        assert status == 1, (changes, out)
        assert re.search(message, out), (changes, out)
    assert not (tmp_path / "run").exists()  # validate creates nothing


def test_validate_passes_a_good_config_and_a_batch_of_one_where_batchnorm_allows(synth_root, tmp_path, capsys):
    raw = tiny_raw_config(synth_root, tmp_path / "run")
    raw["dataset"]["cache_workers"] = 1
    raw["model"] = {"type": f"{FIXTURES}:SpatialBatchNorm"}
    raw["training"]["batch_size"] = 1
    assert validate.main([str(write_config(tmp_path / "c.yaml", raw))]) == 0, capsys.readouterr().out
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------- late checks: what used to fail after the cache build


@pytest.mark.parametrize("overrides, error, message", [
    ({"dataset__split__val": ["Video_0003"]}, ConfigError, "dataset.split.val: 'Video_0003' is not one"),
    ({"dataset__split__test": ["nope"], "dataset__split__val": []}, ConfigError, "dataset.split.test"),
    ({"training__resume_from_checkpoint": "/nonexistent/epoch_0001.pth"}, CheckpointError,
     "training.resume_from_checkpoint: /nonexistent/epoch_0001.pth does not exist"),
    ({"model": {"type": "misshapen_models:WrongClassCount"}}, ConfigError, r"logits of shape \[1, 14, 48, 64\]"),
    ({"model": {"type": "misshapen_models:HalfSize"}}, ConfigError, r"logits of shape \[1, 13, 24, 32\]"),
    ({"model": {"type": "misshapen_models:RaisesInInit"}}, ConfigError, "raised KeyError"),
])
def test_mistakes_are_caught_before_the_cache_build(synth_root, tmp_path, overrides, error, message):
    cfg = tiny_run(synth_root, tmp_path / "run", **overrides)
    with pytest.raises(error, match=message):
        run_training(cfg)
    assert nothing_prepared(cfg)


def test_validate_reports_config_only_mistakes(synth_root, tmp_path):
    raw = tiny_raw_config(synth_root, tmp_path / "run")
    raw["model"]["backbone"] = "resnet999"
    raw["dataset"]["split"]["val"] = ["Video_0003"]
    proc = run_module("dist_seg.validate", str(write_config(tmp_path / "c.yaml", raw)))
    assert proc.returncode == 1
    assert "resnet999" in proc.stdout + proc.stderr and "Video_0003" in proc.stdout + proc.stderr
