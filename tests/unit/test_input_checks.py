"""Command-line and config values that need no model run to refuse: each bad value is one clear line.

Damaged splits.json records, a test root that is the training root, image/label folders outside
the root, numbers too large for the RNGs and timers, slide windows that leave pixels unpredicted,
export sizes that cannot be allocated, and messages that name the setting the user actually gave.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from support.helpers import tiny_raw_config

from dist_seg import atomic
from dist_seg.config import MAX_SEED, config_from_dict
from dist_seg.data.cache import locked_directories
from dist_seg.data.discovery import discover
from dist_seg.data.splits import read_splits, resolve_splits
from dist_seg.errors import ConfigError, DataError
from dist_seg.eval.inference import InferenceSettings
from dist_seg.export import main as export_main


def _config(tmp_path: Path, root: Path, **sections: dict):
    raw = tiny_raw_config(root, tmp_path / "run")
    for section, values in sections.items():
        raw[section].update(values)
    return config_from_dict(raw)


# ----------------------------------------------------------------------------- splits.json


@pytest.mark.parametrize("content", ["[]", "null", "{not json",
                                     json.dumps({"format_version": 1, "sequences": {}, "splits": {}})],
                         ids=["list", "null", "not-json", "no-settings"])
def test_damaged_splits_file_is_refused_naming_it_and_kept(synth_root, tmp_path, content):
    cfg = _config(tmp_path, synth_root)
    path = tmp_path / "run" / "splits.json"
    path.parent.mkdir(parents=True)
    path.write_text(content)
    with pytest.raises(DataError, match=r"run/splits.json is unreadable or damaged .*delete it \(or set "
                                        r"training.force_resplit: true\)"):
        resolve_splits(discover(synth_root, cfg.dataset), None, cfg, log=lambda _m: None)
    assert path.read_text() == content  # the record of what was trained on is not overwritten
    with pytest.raises(DataError, match="splits.json is damaged"):
        read_splits(cfg)

    forced = _config(tmp_path, synth_root, training={"force_resplit": True})
    assert resolve_splits(discover(synth_root, cfg.dataset), None, forced, log=lambda _m: None).train


def test_prepare_refuses_a_damaged_splits_file_before_the_cache_build(synth_root, tmp_path):
    from dist_seg.data.pipeline import prepare

    cfg = _config(tmp_path, synth_root)
    path = tmp_path / "run" / "splits.json"
    path.parent.mkdir(parents=True)
    path.write_text("[]")
    with pytest.raises(DataError, match="splits.json is unreadable or damaged"):
        prepare(cfg, log=lambda _m: None, progress=False)
    assert not (tmp_path / "run_cache").exists()


# ----------------------------------------------------------------------------- dataset paths


def test_test_root_that_is_the_training_root_is_refused(synth_root, tmp_path):
    with pytest.raises(ConfigError, match="dataset.test_root: is the same folder as dataset.root"):
        _config(tmp_path, synth_root, dataset={"test_root": str(synth_root)})
    link = tmp_path / "link"
    link.symlink_to(synth_root)
    with pytest.raises(ConfigError, match="dataset.test_root: is the same folder as dataset.root"):
        _config(tmp_path, synth_root, dataset={"test_root": str(link) + "/"})


@pytest.mark.parametrize("key", ["images", "labels"])
@pytest.mark.parametrize("value", ["/elsewhere/Images", "../Images", "sub/../../Images"])
def test_image_and_label_folders_outside_the_root_are_refused(synth_root, tmp_path, key, value):
    with pytest.raises(ConfigError, match=rf"dataset.{key}: must be a folder inside dataset.root"):
        _config(tmp_path, synth_root, dataset={key: value})


# ----------------------------------------------------------------------------- numbers too large


@pytest.mark.parametrize("section, key, value, message", [
    ("training", "seed", 100000000000000000000, r"training.seed: must be in 0..4294967295"),
    ("training", "seed", -1, r"training.seed: must be in 0..4294967295"),
    ("backend", "dist_timeout_s", 1e20, r"backend.dist_timeout_s: must be positive and at most 2592000"),
    ("backend", "prepare_timeout_s", 1e20, r"backend.prepare_timeout_s: must be positive and at most"),
    ("telemetry", "vram_interval_s", 1e20, r"telemetry.vram_interval_s: must be positive and at most 3600"),
])
def test_numbers_too_large_for_rngs_and_timers_are_refused(synth_root, tmp_path, section, key, value, message):
    with pytest.raises(ConfigError, match=message):
        _config(tmp_path, synth_root, **{section: {key: value}})


def test_largest_seed_seeds_every_generator(synth_root, tmp_path):
    import torch

    from dist_seg.train.run import seed_everything

    cfg = _config(tmp_path, synth_root, training={"seed": MAX_SEED})
    seed_everything(cfg.training.seed)
    torch.Generator().manual_seed(cfg.training.seed * 1000 + 7)  # the augmentation generator of rank 7


def test_export_size_has_an_upper_bound(capsys):
    for option in ("--height", "--width"):
        with pytest.raises(SystemExit) as exit_info:
            export_main(["--checkpoint", "x.pth", "--format", "torch-export", option, "100000"])
        assert exit_info.value.code == 2
        assert f"argument {option}: must be <= 8192, got 100000" in capsys.readouterr().err


# ----------------------------------------------------------------------------- inference settings


@pytest.mark.parametrize("scales", [(75.0,), (1.0, 100.0), (float("inf"),), (float("nan"),), (0.0,), (0.1,)])
def test_tta_scales_beyond_the_bound_are_refused(scales):
    with pytest.raises(ConfigError, match=r"--tta scales must be factors of the network input size from 0\.25 "
                                          r"to 4 "):
        InferenceSettings(scales=scales)


def test_a_stride_longer_than_the_window_is_refused():
    with pytest.raises(ConfigError, match="--stride 64x64 is longer than the slide window 32x32"):
        InferenceSettings(mode="slide", crop=(32, 32), stride=(64, 64))
    # Without --crop the window is the network size, known only with the model.
    settings = InferenceSettings(mode="slide", stride=(64, 100))
    with pytest.raises(ConfigError, match="--stride 64x100 is longer than the slide window 48x64"):
        settings.window((48, 64))
    assert InferenceSettings(mode="slide").window((48, 64)) == ((48, 64), (32, 43))


# ----------------------------------------------------------------------------- the setting named


def test_cache_lock_failure_names_the_option_that_chose_the_folder(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(DataError, match=r"set --cache-dir to a writable folder"):
        with locked_directories([blocker / "sub"], log=lambda _m: None, cache_key="--cache-dir"):
            pass
    with pytest.raises(DataError, match=r"set dataset.cache_dir \(or \$DIST_SEG_CACHE\) to a writable folder"):
        with locked_directories([blocker / "sub"], log=lambda _m: None):
            pass


def test_missing_checkpoint_names_the_key_given(tmp_path):
    from dist_seg.checkpoint_file import load_checkpoint
    from dist_seg.errors import CheckpointError

    with pytest.raises(CheckpointError, match=r"^--checkpoint: checkpoint .*nope.pth does not exist"):
        load_checkpoint(tmp_path / "nope.pth", "--checkpoint")
    with pytest.raises(CheckpointError, match=r"^training.resume_from_checkpoint: checkpoint"):
        load_checkpoint(tmp_path / "nope.pth")


# ----------------------------------------------------------------------------- stale staging folders


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_stale_staging_folders_are_removed_and_live_ones_kept(tmp_path):
    target = tmp_path / "model.pt2"
    with atomic.staging_folder(target) as live:
        (live / "model.pt2").write_bytes(b"partial")
        stale = live.with_name(live.name.replace(f"-{os.getpid()}.", f"-{_dead_pid()}."))
        stale.mkdir()
        (stale / "model.pt2").write_bytes(b"left by a killed export")
        assert atomic.remove_stale_temporaries(tmp_path) == [stale]
        assert live.is_dir() and not stale.exists()
    assert not live.exists()


def test_missing_folders_name_the_setting_that_gave_the_root(synth_root, tmp_path):
    from dist_seg.data.checks import listing_problems
    from dist_seg.data.discovery import discover_all

    cfg = _config(tmp_path, synth_root, dataset={"test_root": str(tmp_path / "no-test")})
    main, test = discover_all(cfg.dataset)
    assert not listing_problems(main, cfg.dataset)
    problems = [str(p) for p in listing_problems(test, cfg.dataset)]
    assert len(problems) == 2 and all(f"check dataset.test_root ({tmp_path / 'no-test'})" in p for p in problems)
    elsewhere = discover(tmp_path / "nowhere", cfg.dataset, apply_filters=False, root_key="--root")
    assert all("check --root" in str(p) for p in listing_problems(elsewhere, cfg.dataset))
