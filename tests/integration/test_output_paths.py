"""training.output_dir that is a file, lies under a file, or cannot be written: named before any data work.
"""

from __future__ import annotations

import pytest
from support.helpers import nothing_prepared, tiny_run
from support.tmpfs import read_only_bind

from dist_seg.errors import ConfigError
from dist_seg.train.run import run_training

pytestmark = pytest.mark.slow


def test_output_dir_that_is_a_file_is_named(synth_root, tmp_path):
    (tmp_path / "run").write_text("not a folder")
    cfg = tiny_run(synth_root, tmp_path / "run")
    with pytest.raises(ConfigError, match="training.output_dir: .*run is a file"):
        run_training(cfg)
    assert nothing_prepared(cfg)


def test_output_dir_under_a_file_is_named(synth_root, tmp_path):
    (tmp_path / "file").write_text("x")
    cfg = tiny_run(synth_root, tmp_path / "file" / "run")
    with pytest.raises(ConfigError, match="training.output_dir: cannot write"):
        run_training(cfg)


def test_read_only_checkpoints_folder_is_found_before_an_epoch_is_lost(synth_root, tmp_path):
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    cfg = tiny_run(synth_root, out)
    with read_only_bind(out / "checkpoints"):
        with pytest.raises(ConfigError, match="checkpoints/ folder.*cannot write"):
            run_training(cfg)
    assert nothing_prepared(cfg)


def test_read_only_output_dir_is_named(synth_root, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    cfg = tiny_run(synth_root, out)
    with read_only_bind(out):
        with pytest.raises(ConfigError, match="training.output_dir: cannot write"):
            run_training(cfg)
