"""A mistake in a ``--set`` override is reported as the command line's, not the config file's."""

from __future__ import annotations

import pytest
import yaml
from support.helpers import tiny_raw_config

from dist_seg.config import load_config
from dist_seg.errors import ConfigError


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(tiny_raw_config(tmp_path / "data", tmp_path / "out")))
    return path


@pytest.mark.parametrize("item, message", [
    ("training.epohcs=2", "--set training.epohcs=2: unknown key; did you mean training.epochs? (on the command line"),
    ("training.epochs=0", "--set training.epochs=0: must be >= 1, got 0 (on the command line"),
    ("training.batch_size=many", "--set training.batch_size=many: "),
])
def test_set_errors_name_the_override(config_file, item, message):
    with pytest.raises(ConfigError) as caught:
        load_config(config_file, [item])
    assert str(caught.value).startswith(message), str(caught.value)


def test_file_errors_still_name_the_file(config_file):
    config_file.write_text(config_file.read_text().replace("epochs: 2", "epohcs: 2"))
    with pytest.raises(ConfigError, match=rf"^{config_file}: training.epohcs: unknown key"):
        load_config(config_file, ["training.batch_size=2"])
