"""The streaming tier (LitData) against a real S3-compatible endpoint on loopback (moto's server) and a folder.

The shards are written from the memmap cache; a run reading them must train on the same frames
in the same order as a run reading the cache, so the weights are compared with such a run.
What the store served is read from its request log: a chunk fetched a second time is a cache miss.
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

pytest.importorskip("litdata")
pytest.importorskip("boto3")
pytest.importorskip("moto.server")

from support.helpers import PYTHON, REPO_ROOT, subprocess_env, tiny_raw_config
from support.torchrun import launch_env, torchrun_train

from benchmarks.loopback_s3 import LoopbackS3
from dist_seg.checkpoint_file import list_checkpoints
from dist_seg.config import apply_overrides, config_from_dict
from dist_seg.data.cache import load_sequence_cache
from dist_seg.data.pipeline import (
    load_datasets,
    prepare,
    read_splits,
    write_split_shards,
)
from dist_seg.data.shards import write_shards
from dist_seg.synth import generate_dataset
from dist_seg.train.run import run_training

pytestmark = pytest.mark.slow

BUCKET = "dist-seg-shards"
STEPS_PER_EPOCH = 4  # 16 frames, batch 4
# No augmentation: the 2-rank run must compute what one rank with twice the batch does.
NO_AUGMENT = {"hflip": False, "scale_min": 1, "scale_max": 1}


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("stream")
    generate_dataset(work / "data", sequences=2, frames=8, size=(32, 48), seed=4)
    return work


def raw_config(work: Path, name: str, **overrides: Any) -> dict[str, Any]:
    raw = tiny_raw_config(work / "data", work / name, work / "cache")
    apply_overrides(raw, {
        "dataset.split": {"val": [], "test": []}, "model": {"type": "fixtures_custom_model:LinearPixelNet"},
        "training.epochs": 2, "training.image_size": [32, 48], "training.class_weighting": "none",
        "training.augment": NO_AUGMENT, "telemetry.tensorboard": False, **overrides}.items())
    return raw


def train(raw: dict[str, Any]) -> dict[str, torch.Tensor]:
    run_training(config_from_dict(raw))
    out = Path(raw["training"]["output_dir"])
    return torch.load(list_checkpoints(out / "checkpoints")[-1].path, weights_only=True)["model"]


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    for key, value in a.items():
        torch.testing.assert_close(value, b[key], rtol=0, atol=0)


@pytest.fixture(scope="module")
def shards(work: Path) -> Path:
    """The cache as shards of 2 frames a chunk (8 chunks), so a small cache limit has something to evict."""
    cfg = config_from_dict(raw_config(work, "prep"))
    prepare(cfg, log=lambda _m: None, progress=False)
    write_split_shards(cfg, work / "shards_default")  # the command's own writer: one chunk here
    splits = read_splits(cfg)
    caches = [load_sequence_cache(seq.root, seq.name, [str(f.image) for f in seq.frame_records()], cfg)
              for seq in splits.train]
    write_shards(caches, work / "shards", chunk_bytes=3 * 32 * 48 * 4)
    return work / "shards"


@pytest.fixture(scope="module")
def s3(shards: Path) -> Iterator[LoopbackS3]:
    """A moto S3 server on 127.0.0.1 holding the shards under s3://BUCKET/shards (fake credentials)."""
    with LoopbackS3(shards, BUCKET, "shards") as server:
        yield server


def chunks_of(shards: Path) -> list[str]:
    return sorted(p.name for p in shards.glob("chunk-*.bin"))


def streamed(s3: LoopbackS3, local_cache: Path, **overrides: Any) -> dict[str, Any]:
    return {"dataset.remote": s3.url, "dataset.local_cache": str(local_cache), **overrides}


def cached_chunks(local_cache: Path) -> list[str]:
    return sorted(p.name for p in local_cache.glob("*/chunk-*.bin"))


@pytest.fixture(scope="module")
def from_cache(work: Path, shards: Path) -> dict[str, torch.Tensor]:
    return train(raw_config(work, "memmap"))


def test_s3_cold_start_fetches_each_chunk_once_and_a_warm_run_fetches_none(work, s3, shards, from_cache):
    local_cache = work / "s3_cache"
    s3.clear()
    raw = raw_config(work, "s3_cold", **streamed(s3, local_cache))
    assert_same(train(raw), from_cache)
    # Two epochs, each chunk fetched once: the second epoch read the local cache only.
    fetched = s3.gets()
    assert sorted(name for name in fetched if name.startswith("chunk-")) == chunks_of(shards)
    assert sorted(name for name in fetched if not name.startswith("chunk-")) == ["dist_seg_shards.json", "index.json"]
    assert cached_chunks(local_cache) == chunks_of(shards)
    bundle = load_datasets(config_from_dict(raw))
    assert type(bundle.train).__name__ == "StreamedDataset" and len(bundle.train) == 16

    s3.clear()
    assert_same(train(raw_config(work, "s3_warm", **streamed(s3, local_cache))), from_cache)
    assert s3.gets() == ["dist_seg_shards.json"]


def test_a_cache_limit_below_the_data_size_evicts_and_stays_under_it(work, s3, shards, from_cache):
    local_cache = work / "s3_small"
    chunk_bytes = max(p.stat().st_size for p in shards.glob("chunk-*.bin"))
    limit = 2 * chunk_bytes + chunk_bytes // 2
    peak = 0
    done = threading.Event()

    def watch() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, sum(p.stat().st_size for p in local_cache.glob("*/chunk-*.bin*") if p.exists()))
            time.sleep(0.002)

    watcher = threading.Thread(target=watch)
    watcher.start()
    s3.clear()
    try:
        weights = train(raw_config(work, "s3_small", **streamed(s3, local_cache,
                                                                **{"dataset.local_cache_limit": f"{limit}B"})))
    finally:
        done.set()
        watcher.join()
    assert_same(weights, from_cache)
    fetched = [name for name in s3.gets() if name.startswith("chunk-")]
    assert set(fetched) == set(chunks_of(shards)) and len(fetched) > len(chunks_of(shards))
    assert 0 < peak <= limit, (peak, limit)


def test_sigkill_mid_epoch_then_resume_gives_the_uninterrupted_weights(work, s3, from_cache, capsys):
    gate = work / "kill_gate"
    raw = raw_config(work, "killed", **streamed(s3, work / "kill_cache"))
    # The model holds at the 3rd training forward of epoch 2, after epoch 1's checkpoint.
    raw["model"] = {"type": "gated_model:GatedNet", "gate_dir": str(gate), "hold_at": STEPS_PER_EPOCH + 3}
    config = work / "killed.yaml"
    config.write_text(yaml.safe_dump(raw))
    cmd = [PYTHON, "-m", "dist_seg.train", str(config)]
    with open(work / "killed.log", "wb") as log:
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=subprocess_env(), stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240
        while not (gate / "held.rank0").exists():
            assert proc.poll() is None and time.monotonic() < deadline, (work / "killed.log").read_text()[-3000:]
            time.sleep(0.05)
        assert int((gate / "held.rank0").read_text()) == proc.pid
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
    assert [c.path.name for c in list_checkpoints(work / "killed" / "checkpoints")] == ["epoch_0001.pth"]
    (gate / "open").touch()
    raw["training"]["resume_from_checkpoint"] = "auto"
    capsys.readouterr()
    assert_same(train(raw), from_cache)
    assert "continuing at the start of epoch 2" in capsys.readouterr().out


def test_two_ranks_read_from_s3_and_train_like_one_rank_with_twice_the_batch(work, s3, shards, from_cache):
    local_cache = work / "two_rank_cache"
    raw = raw_config(work, "two_ranks", **streamed(s3, local_cache), **{"training.batch_size": 2})
    config = work / "two_ranks.yaml"
    config.write_text(yaml.safe_dump(raw))
    s3.clear()
    rank0 = torchrun_train(config, 2, work / "two_rank_logs", env=launch_env())
    assert "rank 0/2" in rank0
    checkpoints = [torch.load(c.path, weights_only=True)["model"]
                   for c in list_checkpoints(work / "two_ranks" / "checkpoints")]
    # Summation order differs across ranks (float32 rounding); training moved the weights far more.
    for key, value in from_cache.items():
        torch.testing.assert_close(checkpoints[-1][key], value, rtol=0, atol=1e-4)
    assert (checkpoints[-1]["classifier.weight"] - checkpoints[0]["classifier.weight"]).abs().max() > 1e-3
    assert cached_chunks(local_cache) == chunks_of(shards)
    # The ranks share the folder: one of them fetches each chunk, the other reads it from disk.
    fetched = s3.gets()
    assert sorted(name for name in fetched if name.startswith("chunk-")) == chunks_of(shards)
    assert fetched.count("index.json") == 1 and fetched.count("dist_seg_shards.json") == 2


def test_a_folder_remote_stops_and_resumes_to_the_same_weights(work, shards, from_cache):
    streamed = {"dataset.remote": str(shards), "dataset.local_cache": str(work / "folder_cache")}
    raw = raw_config(work, "folder", **streamed, **{"training.max_steps": 5})
    train(raw)
    assert list_checkpoints(work / "folder" / "checkpoints")[-1].path.name == "epoch_0002_batch_000001.pth"
    apply_overrides(raw, [("training.max_steps", None), ("training.resume_from_checkpoint", "auto")])
    assert_same(train(raw), from_cache)


def test_shards_of_other_settings_are_refused(work, shards):
    raw = raw_config(work, "other", **{"dataset.remote": str(shards), "dataset.local_cache": str(work / "oc"),
                                       "dataset.cache_dir": str(work / "cache_other"),
                                       "training.image_size": [16, 24]})
    cfg = config_from_dict(raw)
    prepare(cfg, log=lambda _m: None, progress=False)
    with pytest.raises(Exception, match="hold other data or settings for, Video_000, Video_001"):
        load_datasets(cfg)
