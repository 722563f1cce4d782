"""Whole-chunk downloads of ``s3://`` shards for LitData through boto3 (imported only with the stream extra).

LitData 0.2.76 downloads S3 chunks through obstore with fixed client options that leave out
``allow_http``; obstore's explicit client options replace those it reads from the environment
(``AWS_ALLOW_HTTP``), so every chunk GET from a plain-http S3-compatible endpoint (MinIO, moto,
an on-premise gateway) fails with "builder error". boto3, which LitData already uses for its
index, honours ``AWS_ENDPOINT_URL`` over http and https alike; this downloader is registered
for ``s3://`` through LitData's public ``register_downloader``.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any
from urllib.parse import urlparse

import boto3
from filelock import FileLock
from litdata.streaming.downloader import Downloader, register_downloader


class Boto3S3Downloader(Downloader):
    """Downloads ``s3://bucket/key`` objects whole into LitData's cache folder, atomically."""

    def __init__(self, remote_dir: str, cache_dir: str, chunks: list[dict[str, Any]],
                 storage_options: dict | None = None, **kwargs: Any) -> None:
        super().__init__(remote_dir, cache_dir, chunks, storage_options)
        # A session per downloader: boto3's default session is not thread-safe, and LitData
        # downloads from its own prefetch thread.
        self._s3 = boto3.session.Session().client("s3")

    def download_file(self, remote_filepath: str, local_filepath: str) -> None:
        """Fetch ``remote_filepath`` to ``local_filepath`` unless it is already there (then only notify)."""
        url = urlparse(remote_filepath)
        if url.scheme != "s3":
            raise ValueError(f"not an s3:// address: {remote_filepath}")
        # Ranks and loader workers of a node share the folder: the first to want a file fetches
        # it, the others wait for it instead of fetching it again.
        with FileLock(local_filepath + ".lock"):
            if not os.path.exists(local_filepath):
                tmp = self._temp_download_path(local_filepath)
                try:
                    self._s3.download_file(url.netloc, url.path.lstrip("/"), tmp)
                    self._atomic_replace(tmp, local_filepath)
                finally:
                    with contextlib.suppress(FileNotFoundError):
                        os.remove(tmp)
        self._notify_published(local_filepath)


def use_boto3_for_s3() -> None:
    """Make LitData fetch ``s3://`` objects through :class:`Boto3S3Downloader` in this process."""
    register_downloader("s3://", Boto3S3Downloader, overwrite=True)
