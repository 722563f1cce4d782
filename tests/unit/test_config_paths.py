"""Where relative paths point: command-line values from the current directory, file values from the file's folder."""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from dist_seg.config import load_config


def _config(path: Path, **training) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"dataset": {"root": "data"}, "training": {"output_dir": "out", **training}}))
    return path


def test_a_relative_override_resolves_from_the_current_directory(tmp_path, monkeypatch):
    config = _config(tmp_path / "configs" / "run.yaml")
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    cfg = load_config(config, ["training.output_dir=rel_out", "dataset.root=../data"])
    assert cfg.training.output_dir == tmp_path / "work" / "rel_out"
    assert cfg.dataset.root == tmp_path / "data"


def test_a_relative_path_in_the_file_resolves_from_the_files_folder(tmp_path, monkeypatch):
    _config(tmp_path / "configs" / "run.yaml")
    monkeypatch.chdir(tmp_path)
    cfg = load_config(Path("configs/run.yaml"))
    assert cfg.training.output_dir == tmp_path / "configs" / "out"
    assert cfg.dataset.root == tmp_path / "configs" / "data"


def test_a_symlinked_config_resolves_from_the_folder_of_the_link(tmp_path):
    real = _config(tmp_path / "shared" / "base.yaml")
    mine = tmp_path / "mine"
    mine.mkdir()
    os.symlink(real, mine / "run.yaml")
    cfg = load_config(mine / "run.yaml")
    assert cfg.training.output_dir == mine / "out" and cfg.dataset.root == mine / "data"


def test_a_nested_override_resolves_from_the_current_directory(tmp_path, monkeypatch):
    config = _config(tmp_path / "configs" / "run.yaml")
    monkeypatch.chdir(tmp_path)
    cfg = load_config(config, ["training={output_dir: elsewhere}"])
    assert cfg.training.output_dir == tmp_path / "elsewhere"
