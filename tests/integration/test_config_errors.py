"""Config files a user gets wrong: non-finite numbers, non-UTF-8 text, duplicate or odd YAML keys, unknown home
directories, sizes too large for memory. Each is one line without a traceback (unless --debug asks for it).
"""

from __future__ import annotations

import pytest
from support.helpers import TINY_NET, run_module, subprocess_env, tiny_raw_config, write_config

from dist_seg.config import load_config
from dist_seg.errors import ConfigError

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("key", ["learning_rate", "weight_decay", "min_lr", "momentum"])
@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan"])
def test_non_finite_numbers_are_rejected(tmp_path, key, value):
    config = tmp_path / "c.yaml"
    config.write_text(f"dataset: {{root: /data}}\ntraining: {{output_dir: /out, {key}: {value}}}\n")
    with pytest.raises(ConfigError, match=f"training.{key}"):
        load_config(config)


def test_non_utf8_config_is_one_line(tmp_path):
    config = tmp_path / "latin1.yaml"
    config.write_bytes("dataset: {root: /données}\ntraining: {output_dir: /out}\n".encode("latin-1"))
    proc = run_module("dist_seg.train", str(config))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "is not UTF-8" in proc.stderr and "latin1.yaml" in proc.stderr


@pytest.mark.parametrize("text, key, lines", [
    ("dataset: {root: /a}\ntraining:\n  output_dir: /o\n  epochs: 3\n  epochs: 5\n", "epochs", "4 and 5"),
    ("training: {output_dir: /o, epochs: 2}\ndataset: {root: /a}\ntraining: {output_dir: /p}\n", "training", "1 and 3"),
    ("dataset: {root: /a, root: /b}\ntraining: {output_dir: /o}\n", "root", "1 and 1"),
])
def test_duplicate_yaml_keys_are_refused_with_the_lines(tmp_path, text, key, lines):
    config = tmp_path / "dupe.yaml"
    config.write_text(text)
    with pytest.raises(ConfigError, match=f"key '{key}' appears twice .*lines {lines}"):
        load_config(config)


def test_unknown_home_directory_is_a_config_error(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("dataset: {root: ~no_such_user_dist_seg/data}\ntraining: {output_dir: /o}\n")
    with pytest.raises(ConfigError, match="dataset.root: cannot expand '~no_such_user_dist_seg/data'"):
        load_config(config)
    with pytest.raises(ConfigError, match="config file path"):
        load_config("~no_such_user_dist_seg/c.yaml")


def test_yaml_merge_keys_are_yaml_not_duplicates(tmp_path):
    """``<<: *base`` is standard YAML; an explicit key next to it overrides the merged one (not a duplicate)."""
    path = tmp_path / "merge.yaml"
    path.write_text("base: &base\n  batch_size: 2\n  epochs: 3\n"
                    "dataset:\n  root: data\ntraining:\n  <<: *base\n  epochs: 5\n  output_dir: out\n")
    with pytest.raises(ConfigError, match="base: unknown") as info:  # the anchor's own section is not a key
        load_config(path)
    assert "not valid YAML" not in str(info.value)
    path.write_text("dataset:\n  root: data\ntraining: &t\n  batch_size: 2\n  <<: {epochs: 3, num_workers: 0}\n"
                    "  epochs: 5\n  output_dir: out\n")
    cfg = load_config(path)
    assert (cfg.training.batch_size, cfg.training.epochs, cfg.training.num_workers) == (2, 5, 0)


def test_a_list_as_a_key_is_one_line_naming_it(tmp_path):
    path = tmp_path / "odd.yaml"
    path.write_text("dataset:\n  root: data\ntraining:\n  [a, b]: 1\n")
    with pytest.raises(ConfigError, match=r"line 4.*plain name"):
        load_config(path)


def test_image_size_too_large_for_memory_or_disk_is_one_line(synth_root, tmp_path):
    raw = tiny_raw_config(synth_root, tmp_path / "run")
    raw["model"] = dict(TINY_NET)
    raw["training"]["image_size"] = [200000, 200000]
    proc = run_module("dist_seg.train", str(write_config(tmp_path / "c.yaml", raw)))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "training.image_size [200000, 200000]" in proc.stderr
    proc = run_module("dist_seg.prepare", str(write_config(tmp_path / "c.yaml", raw)))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "the cache build" in proc.stderr and "MiB are free" in proc.stderr


def test_debug_flag_and_variable_add_the_traceback(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("dataset: {root: /a}\ntraining: {output_dir: /o, learning_rate: .inf}\n")
    quiet = run_module("dist_seg.validate", str(config))
    assert quiet.returncode == 1 and "Traceback" not in quiet.stderr
    for proc in (run_module("dist_seg.validate", str(config), "--debug"),
                 run_module("dist_seg.validate", str(config), env={**subprocess_env(), "DIST_SEG_DEBUG": "1"})):
        assert proc.returncode == 1 and "Traceback" in proc.stderr and "training.learning_rate" in proc.stderr
