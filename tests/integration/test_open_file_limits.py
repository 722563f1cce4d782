"""Many sequences under a low open-file limit: the soft limit is raised (logged), a too-low hard limit is named.

Real processes under ``resource.setrlimit`` (set in the child before it starts), a real dataset of
120 one-frame sequences: 240 memory-mapped arrays, each holding a descriptor.
"""

from __future__ import annotations

import resource
import subprocess
from pathlib import Path

import pytest
import yaml
from support.helpers import PYTHON, REPO_ROOT, subprocess_env

from dist_seg.synth import generate_dataset

pytestmark = pytest.mark.slow
SEQUENCES = 120
# Above what the interpreter and torch open at start, far below the 240 arrays plus headroom.
LOW = 200

READ_ALL = """
import sys
from dist_seg.config import load_config
from dist_seg.data.pipeline import load_datasets
from dist_seg.cli_common import run_cli

def main(_argv):
    bundle = load_datasets(load_config(sys.argv[1]))
    bundle.train[len(bundle.train) - 1]  # maps every sequence's arrays
    print("read", len(bundle.train), "frames")
    return 0

sys.exit(run_cli(main, []))
"""


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("many")
    generate_dataset(base / "data", sequences=SEQUENCES, frames=1, size=(16, 16), seed=0)
    path = base / "c.yaml"
    path.write_text(yaml.safe_dump({
        "dataset": {"root": str(base / "data"), "cache_dir": str(base / "cache"), "cache_workers": 1,
                    "split": {"val": ["Video_000"], "test": []}},
        "training": {"output_dir": str(base / "run"), "image_size": [16, 16], "batch_size": 2},
    }))
    return path


def _limited(soft: int, hard: int | None = None):
    def apply() -> None:
        current_hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, current_hard if hard is None else hard))
    return apply


def _run(args: list[str], limit) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, *args], capture_output=True, text=True, cwd=REPO_ROOT, env=subprocess_env(),
                          timeout=600, preexec_fn=limit)


def test_prepare_and_reading_raise_a_low_soft_limit_and_say_so(config):
    if resource.getrlimit(resource.RLIMIT_NOFILE)[1] < 4 * LOW:
        pytest.skip("the hard open-file limit here leaves no room to raise the soft one")
    prepared = _run(["-m", "dist_seg.prepare", str(config)], _limited(LOW))
    assert prepared.returncode == 0, prepared.stderr[-2000:]
    assert f"raised the soft open-file limit from {LOW} to" in prepared.stdout
    read = _run(["-c", READ_ALL, str(config)], _limited(LOW))
    assert read.returncode == 0, read.stderr[-2000:]
    assert f"read {SEQUENCES - 1} frames" in read.stdout and "raised the soft open-file limit" in read.stdout


def test_a_hard_limit_too_low_is_named_with_the_fix(config, tmp_path):
    other = yaml.safe_load(config.read_text())
    other["dataset"]["cache_dir"] = str(tmp_path / "cache")
    other["training"]["output_dir"] = str(tmp_path / "run")
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(other))
    proc = _run(["-m", "dist_seg.prepare", str(path)], _limited(LOW, LOW))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert f"the open-file limit is {LOW} (hard limit {LOW}); raise it (ulimit -n" in proc.stderr


ADDRESS_SPACE_SCRIPT = """
import resource, sys
from pathlib import Path
import numpy as np
from dist_seg.data.cache import _map
from dist_seg.errors import DataError

path = Path(sys.argv[1])
np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(256, 2**20)).flush()  # sparse: no disk used
size = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmSize:"))
resource.setrlimit(resource.RLIMIT_AS, (size + 32 * 2**20, resource.getrlimit(resource.RLIMIT_AS)[1]))
try:
    _map(path)
except DataError as exc:
    print(exc)
    sys.exit(3)
sys.exit(0)
"""


def test_a_mapping_refused_by_the_address_space_limit_names_the_size_and_the_limit(tmp_path):
    """``ulimit -v`` below what a cache array needs: one line with the array's size and the limit, no ENOMEM traceback."""
    done = subprocess.run([PYTHON, "-c", ADDRESS_SPACE_SCRIPT, str(tmp_path / "images.npy")], cwd=REPO_ROOT,
                          env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 3, done.stdout + done.stderr
    assert "(256.0 MiB) into memory: the address-space limit (ulimit -v) is" in done.stdout
    assert "raise the limit (ulimit -v unlimited) or lower the cache size" in done.stdout
