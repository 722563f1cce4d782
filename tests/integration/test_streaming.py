"""The streaming tier (LitData) against a real S3-compatible endpoint on loopback (moto's server) and a folder.

The shards are written from the memmap cache; a run reading them must train on the same frames
in the same order as a run reading the cache, so the weights are compared with such a run.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("litdata")
boto3 = pytest.importorskip("boto3")
moto_server = pytest.importorskip("moto.server")

from support.helpers import tiny_raw_config

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
        "telemetry.tensorboard": False, **overrides}.items())
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
    """The cache as shards of ~3 frames a chunk, so a small cache limit has something to evict."""
    cfg = config_from_dict(raw_config(work, "prep"))
    prepare(cfg, log=lambda _m: None, progress=False)
    write_split_shards(cfg, work / "shards_default")  # the command's own writer: one chunk here
    splits = read_splits(cfg)
    caches = [load_sequence_cache(seq.root, seq.name, [str(f.image) for f in seq.frame_records()], cfg)
              for seq in splits.train]
    write_shards(caches, work / "shards", chunk_bytes=3 * 32 * 48 * 4)
    return work / "shards"


@pytest.fixture(scope="module")
def s3(shards: Path) -> Iterator[str]:
    """A moto S3 server on 127.0.0.1 holding the shards under s3://BUCKET/shards (fake credentials)."""
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
           "AWS_DEFAULT_REGION": "us-east-1"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        client = boto3.client("s3")
        client.create_bucket(Bucket=BUCKET)
        for path in shards.iterdir():
            client.upload_file(str(path), BUCKET, f"shards/{path.name}")
        yield f"s3://{BUCKET}/shards"
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="module")
def from_cache(work: Path, shards: Path) -> dict[str, torch.Tensor]:
    return train(raw_config(work, "memmap"))


def test_s3_cold_start_trains_like_the_memmap_cache(work, s3, from_cache):
    raw = raw_config(work, "s3_cold", **{"dataset.remote": s3, "dataset.local_cache": str(work / "s3_cache")})
    assert_same(train(raw), from_cache)
    bundle = load_datasets(config_from_dict(raw))
    assert type(bundle.train).__name__ == "StreamedDataset" and len(bundle.train) == 16


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
