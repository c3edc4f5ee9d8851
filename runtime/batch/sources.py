"""Reading a job's input from where the seeds' API says it is: s3://bucket/key or http(s)://."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urlparse

import httpx

from runtime.batch.storage import ObjectStore


class SourceError(ValueError):
    """The input URL cannot be read; the message says why."""


def open_lines(objects: ObjectStore, url: str, max_bytes: int) -> Iterator[bytes]:
    """Lines of the input; an S3 object over the limit is refused before reading. Blocking (run it in a thread)."""
    parsed = urlparse(url)
    if parsed.scheme == "s3":
        bucket, key = parsed.netloc, parsed.path.lstrip("/")
        if not bucket or not key:
            raise SourceError(f"input_file_url {url!r}: expected s3://bucket/key")
        try:
            size = objects.size(key, bucket=bucket)
        except Exception as exc:
            raise SourceError(f"input_file_url {url!r}: cannot read the object ({exc})") from exc
        if size > max_bytes:
            raise SourceError(f"input_file_url {url!r}: {size} bytes is over the {max_bytes}-byte limit")
        return objects.open(key, bucket=bucket).iter_lines(keepends=False)
    if parsed.scheme in ("http", "https"):
        return _http_lines(url, max_bytes)
    raise SourceError(f"input_file_url {url!r}: use s3://bucket/key or an http(s) URL")


def _http_lines(url: str, max_bytes: int) -> Iterator[bytes]:
    seen = 0
    try:
        with httpx.stream("GET", url, timeout=60, follow_redirects=True) as response:
            if not response.is_success:
                raise SourceError(f"input_file_url {url!r}: HTTP {response.status_code}")
            pending = b""
            for block in response.iter_bytes():
                seen += len(block)
                if seen > max_bytes:
                    raise SourceError(f"input_file_url {url!r}: more than the {max_bytes}-byte limit")
                pending += block
                *lines, pending = pending.split(b"\n")
                yield from lines
            if pending:
                yield pending
    except httpx.HTTPError as exc:
        raise SourceError(f"input_file_url {url!r}: {type(exc).__name__}: {exc}") from exc
