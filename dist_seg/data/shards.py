"""The streaming data tier (``pip install dist_seg[stream]``): LitData shards of the training-resolution cache.

``python -m dist_seg.prepare CONFIG --shards OUT`` writes every cached frame (uint8 image
``[3, H, W]``, uint8 class-id mask ``[H, W]``) as LitData chunks, sequence after sequence,
plus ``dist_seg_shards.json``: per sequence its frames' paths and range in the shards and the
cache fingerprint (file list, sizes, mtimes, classes, palette, resolution), so a run refuses
shards written with other settings. Upload ``OUT`` as it is to an object store.

With ``dataset.remote`` set, the training split is read through LitData's chunk cache
(``litdata.streaming.cache.Cache``): a chunk is downloaded whole on first use into a folder of
``dataset.local_cache`` named by the remote and its manifest, kept there for later epochs and
runs, and chunks already read are deleted once the folder holds more than
``dataset.local_cache_limit``. It is random access by index, so the trainer's own
:class:`~dist_seg.data.loader.TrainingSampler` keeps its order, drop-last and exact resume
(the position, a count of samples, lives in the checkpoint), and augmentation stays on the device.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..atomic import write_json
from ..errors import ConfigError, DataError
from .cache import SequenceCache
from .dataset import Sample

MANIFEST = "dist_seg_shards.json"
FORMAT_VERSION = 1


def _litdata() -> Any:
    try:
        import litdata
    except ImportError as exc:
        raise ConfigError("dataset.remote and prepare --shards need the streaming extra: "
                          "pip install 'dist_seg[stream]' (LitData)") from exc
    return litdata


def cache_fingerprint(cache: SequenceCache) -> str:
    """The fingerprint of a sequence's cache (it names the cache's mask file)."""
    return cache.masks_file.removeprefix("masks-").removesuffix(".npy")


def write_shards(caches: Sequence[SequenceCache], out: Path, chunk_bytes: int = 64 * 2**20) -> dict[str, Any]:
    """Write the frames of ``caches`` (which must hold images) as LitData chunks into ``out``; returns the manifest.

    Frames go in sequence order, so a chunk holds consecutive frames of one sequence (two at
    a border), and reading a sequence touches few chunks. The manifest is written last:
    a folder without it is an interrupted write.
    """
    _litdata()
    from litdata.streaming.writer import BinaryWriter

    if any(cache.images_file is None for cache in caches):
        raise ConfigError("prepare --shards writes cached images: set dataset.cache_images: true")
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)
    writer = BinaryWriter(str(out), chunk_bytes=chunk_bytes)
    sequences, index = [], 0
    for cache in caches:
        images, masks = cache.open_images(), cache.open_masks()
        for k in range(len(cache.frames)):
            # Paths stay in the manifest: LitData 0.2.76 returns a str field next to arrays as an array.
            writer.add_item(index + k, {"image": np.ascontiguousarray(images[k]),
                                        "mask": np.ascontiguousarray(masks[k])})
        sequences.append({"name": cache.name, "fingerprint": cache_fingerprint(cache), "start": index,
                          "frames": len(cache.frames), "paths": list(cache.frames)})
        index += len(cache.frames)
    writer.done()
    writer.merge()
    manifest = {"format": "dist_seg-shards", "version": FORMAT_VERSION, "engine": "litdata",
                "size": list(caches[0].size), "frames": index, "chunk_bytes": chunk_bytes, "sequences": sequences}
    write_json(out / MANIFEST, manifest)
    return manifest


def engine_input_dir(remote: str) -> str:
    """The LitData address of ``remote``: URLs as they are; a folder as ``local:``, so it is cached like a store."""
    return remote if "://" in remote else f"local:{Path(remote).resolve()}"


def _engine_downloads() -> Any:
    """LitData's ``get_downloader``, with ``s3://`` objects fetched through boto3 (see :mod:`.s3_download`)."""
    _litdata()
    from litdata.streaming.downloader import get_downloader

    from .s3_download import use_boto3_for_s3

    use_boto3_for_s3()
    return get_downloader


def read_manifest(remote: str, local_cache: Path) -> dict[str, Any]:
    """``dist_seg_shards.json`` of ``remote`` (fetched through the engine's downloader); DataError if absent."""
    get_downloader = _engine_downloads()
    local_cache.mkdir(parents=True, exist_ok=True)
    source = engine_input_dir(remote)
    with tempfile.TemporaryDirectory(dir=local_cache) as tmp:
        target = os.path.join(tmp, MANIFEST)
        try:
            get_downloader(source, tmp, []).download_file(f"{source.rstrip('/')}/{MANIFEST}", target)
            return json.loads(Path(target).read_text())
        except (OSError, ValueError) as exc:
            raise DataError(f"dataset.remote {remote}: cannot read {MANIFEST} ({exc}); write the shards with "
                            "python -m dist_seg.prepare CONFIG --shards OUT and upload OUT there") from exc
        except Exception as exc:  # botocore errors: no common base class to name
            raise DataError(f"dataset.remote {remote}: cannot read {MANIFEST} ({type(exc).__name__}: {exc}); "
                            "check the address, the credentials and the endpoint (AWS_ENDPOINT_URL)") from exc


def chunk_folder(remote: str, local_cache: Path, manifest: dict[str, Any]) -> Path:
    """The folder of ``local_cache`` holding ``remote``'s chunks: named by the address and the manifest.

    Shards written again with other data or settings get another manifest and so another folder,
    so a chunk cached from an older write is never read as part of a newer one.
    """
    key = hashlib.sha256(json.dumps([remote, manifest], sort_keys=True).encode()).hexdigest()[:16]
    return local_cache / key


class StreamedDataset(Dataset):
    """The frames of some sequences, read by index through LitData's chunk cache.

    The engine is opened lazily in whichever process reads first (a DataLoader worker, or the
    main process), and dropped when pickled. Its chunks live in ``chunk_dir``; LitData fetches
    a missing one whole (its ``index.json`` too, once) and deletes chunks already read while
    the folder holds more than ``cache_limit``.
    """

    def __init__(self, remote: str, chunk_dir: Path, cache_limit: str, manifest: dict[str, Any],
                 sequences: Sequence[str]) -> None:
        by_name = {s["name"]: s for s in manifest["sequences"]}
        self.remote, self.chunk_dir, self.cache_limit = remote, Path(chunk_dir), cache_limit
        self.size = tuple(manifest["size"])
        self.indices = np.concatenate([np.arange(by_name[n]["start"], by_name[n]["start"] + by_name[n]["frames"])
                                       for n in sequences])
        self.paths = [path for n in sequences for path in by_name[n]["paths"]]
        self._engine: Any = None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_engine"] = None
        return state

    def _open(self) -> Any:
        if self._engine is None:
            _engine_downloads()
            from litdata.streaming.cache import Cache
            from litdata.streaming.item_loader import PyTreeLoader
            from litdata.streaming.resolver import Dir

            self.chunk_dir.mkdir(parents=True, exist_ok=True)
            items = PyTreeLoader()
            # LitData's StreamingDataset reads an index by byte ranges and caches nothing (0.2.76);
            # its Cache downloads whole chunks. chunk_bytes only configures the unused writer half.
            engine = Cache(Dir(path=str(self.chunk_dir), url=engine_input_dir(self.remote)), chunk_bytes=1,
                           max_cache_size=self.cache_limit, item_loader=items)
            # Unmapped, LitData 0.2.76 reads the whole chunk file for every item (looking for a framed
            # header): 64 MiB per 1 MiB frame, ~170x slower here. LitData maps only chunks no other
            # reader shares, for fear of one deleted or replaced while mapped; that is safe on POSIX:
            # every downloader publishes a chunk by renaming a complete file, and a mapped file that is
            # deleted stays readable until unmapped.
            items.set_mmap_allowed_chunks(set(range(len(engine.get_chunk_intervals()))))
            self._engine = engine
        return self._engine

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Sample:
        item = self._open()[int(self.indices[index])]
        # Copies: the engine's arrays are read-only views of a memory-mapped chunk that it may delete.
        return Sample(torch.from_numpy(np.array(item["image"])), torch.from_numpy(np.array(item["mask"])),
                      self.paths[index])


def open_streamed(remote: str, local_cache: Path, cache_limit: str, sequences: Sequence[SequenceCache]
                  ) -> StreamedDataset:
    """The shards of ``sequences`` at ``remote``; DataError unless each was written with this run's settings."""
    manifest = read_manifest(remote, local_cache)
    by_name = {s["name"]: s for s in manifest.get("sequences", [])}
    stale = [c.name for c in sequences
             if c.name not in by_name or by_name[c.name]["fingerprint"] != cache_fingerprint(c)]
    if stale:
        raise DataError(f"dataset.remote {remote}: the shards lack, or hold other data or settings for, "
                        f"{', '.join(stale)}; write them again with python -m dist_seg.prepare CONFIG --shards OUT "
                        "and upload OUT")
    return StreamedDataset(remote, chunk_folder(remote, local_cache, manifest), cache_limit, manifest,
                           [c.name for c in sequences])
