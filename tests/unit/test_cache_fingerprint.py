"""The cache notices content rewritten at the same size and mtime (the ctime is in the fingerprint)."""

from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image
from support.data_files import make_config, make_dataset

from dist_seg.data.pipeline import prepare


def _same_size_png(array: np.ndarray, size: int) -> bytes:
    """``array`` as a PNG of exactly ``size`` bytes: the smallest encoding, padded after IEND (decoders stop there)."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", optimize=True)
    data = buffer.getvalue()
    assert len(data) <= size
    return data + b"\0" * (size - len(data))


def test_a_mask_rewritten_with_the_same_size_and_mtime_rebuilds_its_sequence(tmp_path):
    root = make_dataset(tmp_path / "data", {"Video_000": 2, "Video_001": 2})
    cfg = make_config(tmp_path, root)
    prepare(cfg, log=lambda _m: None, progress=False)
    mask = sorted((root / "Labels" / "Video_001").glob("*.png"))[0]
    stat = mask.stat()
    labels = np.asarray(Image.open(mask).convert("RGB"))[::-1].copy()  # other labels
    mask.write_bytes(_same_size_png(labels, stat.st_size))
    os.utime(mask, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert (mask.stat().st_size, mask.stat().st_mtime_ns) == (stat.st_size, stat.st_mtime_ns)
    summary = prepare(cfg, log=lambda _m: None, progress=False)
    assert summary.built == ["Video_001"] and summary.reused == ["Video_000"]
