"""A broken frame named once, as the culprit's own message: under torchrun (by rank 0, no transport noise),
inside a loader worker process, and above Pillow's pixel limit.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image
from support.helpers import PYTHON, REPO_ROOT, TINY_NET, subprocess_env, tiny_raw_config, write_config
from support.torchrun import launch_env

from dist_seg.data.decode import load_image
from dist_seg.errors import DataError

pytestmark = pytest.mark.slow


def _dataset_with_a_corrupt_frame(synth_root: Path, tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "data"
    shutil.copytree(synth_root, root)
    corrupt = sorted((root / "Images" / "Video_001").iterdir())[2]
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    return root, corrupt


@pytest.mark.distributed
def test_data_error_under_torchrun_is_reported_once_by_rank_0(synth_root, tmp_path):
    root, corrupt = _dataset_with_a_corrupt_frame(synth_root, tmp_path)
    raw = tiny_raw_config(root, tmp_path / "run")
    raw["model"] = dict(TINY_NET)
    config = write_config(tmp_path / "c.yaml", raw)
    env = launch_env()
    proc = subprocess.run([PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "dist_seg.train", str(config)], capture_output=True, text=True, cwd=REPO_ROOT,
                          env=env, timeout=300)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert corrupt.name in output
    # No rank dies in a transport error with its own traceback, and torchrun names rank 0 and the cause.
    for noise in ("gloo/transport", "Connection closed", "RuntimeError", "dist_seg/train", "dist_seg/eval"):
        assert noise not in output, output[-4000:]
    root_cause = output.split("Root Cause", 1)[1]
    assert re.search(r"rank\s*:\s*0 ", root_cause) and corrupt.name in root_cause, output[-4000:]


def test_error_inside_a_loader_worker_arrives_as_the_culprits_message(synth_root, tmp_path):
    # The frame breaks after prepare checked it, while a worker process decodes it.
    root, corrupt = _dataset_with_a_corrupt_frame(synth_root, tmp_path)
    script = tmp_path / "worker_error.py"
    script.write_text(f"""
import sys
from pathlib import Path
from torch.utils.data import DataLoader
from dist_seg.cli_common import run_cli
from dist_seg.data.dataset import DecodeDataset
from dist_seg.data.decode import LabelSpec
from dist_seg.data.discovery import Frame
from support.helpers import tiny_config

def main(argv):
    cfg = tiny_config(Path({str(root)!r}), Path({str(tmp_path / "run")!r}))
    frame = Frame("Video_001", {str(corrupt)!r}, {str(corrupt).replace('Images', 'Labels')!r})
    data = DecodeDataset([frame], LabelSpec.from_config(cfg.dataset), (48, 64))
    for _ in DataLoader(data, num_workers=1):
        pass
    return 0

sys.exit(run_cli(main))
""")
    proc = subprocess.run([PYTHON, str(script)], capture_output=True, text=True, env=subprocess_env(), timeout=120)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr and "DataLoader worker" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith("error: ") and corrupt.name in proc.stderr


def test_image_above_pillows_pixel_limit_is_a_data_error_naming_it(synth_root, monkeypatch):
    frame = next((synth_root / "Images").rglob("*.png"))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 48x64 is then a "decompression bomb"
    with pytest.raises(DataError, match=f"{frame.name}: cannot read image .*exceeds limit"):
        load_image(frame, (48, 64))
