"""An S3-compatible store on loopback (moto's server) holding a folder, with a log of the requests it served.

Used by the streaming tier's tests and by the loader benchmark's streaming rows. Needs
``moto[server]`` (in the ``test`` extra).
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from types import TracebackType

# werkzeug, which serves moto, logs each request as '... "GET /bucket/key HTTP/1.1" 200 -'.
_REQUEST_LINE = re.compile(r'"([A-Z]+) (\S+) HTTP/[\d.]+"')


class _RequestLog(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.requests: list[tuple[str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        match = _REQUEST_LINE.search(record.getMessage())
        if match:
            self.requests.append((match[1], match[2].split("?", 1)[0]))


class LoopbackS3:
    """``with LoopbackS3(folder, "bucket", "prefix") as s3:`` serves ``folder``'s files at ``s3.url``.

    While open, this process's environment points boto3 at the server (``AWS_ENDPOINT_URL``,
    fake credentials), so child processes started with ``os.environ`` reach it too.
    :meth:`requests` lists the ``(method, path)`` of every request served since the last
    :meth:`clear`.
    """

    def __init__(self, folder: Path, bucket: str, prefix: str) -> None:
        self.folder, self.bucket, self.prefix = folder, bucket, prefix
        self.url = f"s3://{bucket}/{prefix}"
        self._log = _RequestLog()
        self._saved: dict[str, str | None] = {}

    def __enter__(self) -> LoopbackS3:
        import boto3
        from moto.server import ThreadedMotoServer

        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"
        env = {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
               "AWS_DEFAULT_REGION": "us-east-1"}
        self._saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        werkzeug = logging.getLogger("werkzeug")
        werkzeug.setLevel(logging.INFO)
        werkzeug.addHandler(self._log)
        client = boto3.client("s3")
        client.create_bucket(Bucket=self.bucket)
        for path in sorted(self.folder.iterdir()):
            client.upload_file(str(path), self.bucket, f"{self.prefix}/{path.name}")
        self.clear()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._server.stop()
        logging.getLogger("werkzeug").removeHandler(self._log)
        for key, value in self._saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value

    def requests(self) -> list[tuple[str, str]]:
        """``(method, path)`` of the requests served since :meth:`clear` (path without the query)."""
        return list(self._log.requests)

    def gets(self) -> list[str]:
        """The object names (relative to the prefix) fetched by GET since :meth:`clear`."""
        start = f"/{self.bucket}/{self.prefix}/"
        return [path.removeprefix(start) for method, path in self.requests() if method == "GET"]

    def clear(self) -> None:
        """Forget the requests served so far."""
        self._log.requests.clear()
