"""Reading a job's input from where the seeds' API says it is: s3://<the batch bucket>/key or http(s)://."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urljoin, urlparse

import httpx

from runtime.batch.storage import LINE_READ_BYTES, ObjectStore
from runtime.batch.urls import Pinned, UrlPolicy, UrlRefusedError

MAX_REDIRECTS = 5


class SourceError(ValueError):
    """The input URL cannot be read; the message says why."""


def open_lines(objects: ObjectStore, url: str, max_bytes: int, *, bucket: str, policy: UrlPolicy) -> Iterator[bytes]:
    """Lines of the input; an S3 object over the limit is refused before reading. Blocking (run it in a thread).

    s3:// may name only the batch bucket (the service's credentials reach others a caller must not read);
    an http(s) URL must pass `policy`, and so must every redirect.
    """
    parsed = urlparse(url)
    if parsed.scheme == "s3":
        key = parsed.path.lstrip("/")
        if not parsed.netloc or not key:
            raise SourceError(f"input_file_url {url!r}: expected s3://bucket/key")
        if parsed.netloc != bucket:
            raise SourceError(f"input_file_url {url!r}: s3:// inputs must be in the batch bucket {bucket!r}")
        try:
            size = objects.size(key, bucket=bucket)
        except Exception as exc:
            raise SourceError(f"input_file_url {url!r}: cannot read the object ({exc})") from exc
        if size > max_bytes:
            raise SourceError(f"input_file_url {url!r}: {size} bytes is over the {max_bytes}-byte limit")
        lines: Iterator[bytes] = objects.open(key, bucket=bucket).iter_lines(chunk_size=LINE_READ_BYTES, keepends=False)
        return lines
    if parsed.scheme in ("http", "https"):
        return _http_lines(url, max_bytes, policy, _check(policy, url))
    raise SourceError(f"input_file_url {url!r}: use s3://bucket/key or an http(s) URL")


def _check(policy: UrlPolicy, url: str) -> Pinned:
    try:
        return policy.pinned(url, param="input_file_url")
    except UrlRefusedError as exc:
        raise SourceError(str(exc)) from None


def _http_lines(url: str, max_bytes: int, policy: UrlPolicy, pinned: Pinned) -> Iterator[bytes]:
    seen = 0
    try:
        with httpx.Client(timeout=60, follow_redirects=False) as http:
            target = url
            for _hop in range(MAX_REDIRECTS + 1):
                # To the address the check accepted, not to a second lookup that may answer otherwise.
                with http.stream("GET", pinned.url, headers=pinned.headers, extensions=pinned.extensions) as response:
                    if response.is_redirect:
                        target = urljoin(target, response.headers["location"])
                        pinned = _check(policy, target)  # a redirect is a new URL: it passes the policy too
                        continue
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
                    return
            raise SourceError(f"input_file_url {url!r}: more than {MAX_REDIRECTS} redirects")
    except httpx.HTTPError as exc:
        raise SourceError(f"input_file_url {url!r}: {type(exc).__name__}: {exc}") from exc
