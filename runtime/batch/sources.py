"""Reading a job's input from where the seeds' API says it is: s3://<the batch bucket>/files/<file id> or
http(s)://, copied whole into a local spool before a line is checked.

An http(s) input is read on the event loop (httpx's async client), never in a thread: a slow or
trickling server holds a socket and a coroutine, not one of the API's few worker threads, and the
whole read, redirects included, has a deadline (BATCH_INPUT_URL_TIMEOUT_SECONDS), not only each read.
Which s3:// objects a caller may name is the route's check (routes_seeds.owned_input): the key
names one of the caller's files.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import IO
from urllib.parse import urljoin, urlparse

import httpx

from runtime.batch.storage import LINE_READ_BYTES, ObjectStore
from runtime.batch.urls import Pinned, UrlPolicy, UrlRefusedError

MAX_REDIRECTS = 5
READ_TIMEOUT_S = 60.0  # each connect and read; the whole read has its own deadline


class SourceError(ValueError):
    """The input URL cannot be read; the message says why."""


def s3_key(url: str, bucket: str) -> str | None:
    """The object key of an s3:// URL in the batch bucket; None for another scheme. s3:// may name only
    the batch bucket: the service's credentials reach others a caller must not read."""
    parsed = urlparse(url)
    if parsed.scheme != "s3":
        return None
    key = parsed.path.lstrip("/")
    if not parsed.netloc or not key:
        raise SourceError(f"input_file_url {url!r}: expected s3://bucket/key")
    if parsed.netloc != bucket:
        raise SourceError(f"input_file_url {url!r}: s3:// inputs must be in the batch bucket {bucket!r}")
    return key


async def copy_input(
    objects: ObjectStore,
    url: str,
    spool: IO[bytes],
    max_bytes: int,
    *,
    bucket: str,
    policy: UrlPolicy,
    deadline_s: float,
) -> None:
    """Write the input's bytes to `spool`; SourceError when it cannot be read, is over `max_bytes`, or
    (http) is not read whole within `deadline_s`. An s3:// key must have been checked by the caller."""
    key = s3_key(url, bucket)
    if key is not None:
        await asyncio.to_thread(_copy_object, objects, url, key, bucket, spool, max_bytes)
        return
    if urlparse(url).scheme not in ("http", "https"):
        raise SourceError(
            f"input_file_url {url!r}: use s3://bucket/key (a file you uploaded: s3://bucket/files/<file id>) "
            "or an http(s) URL"
        )
    try:
        async with asyncio.timeout(deadline_s):
            await _copy_http(url, spool, max_bytes, policy)
    except TimeoutError:
        raise SourceError(
            f"input_file_url {url!r}: not read within {deadline_s:g} s (BATCH_INPUT_URL_TIMEOUT_SECONDS)"
        ) from None


def spooled_lines(spool: IO[bytes]) -> Iterator[bytes]:
    """The spool's lines from where it stands, without their line ends (LF or CRLF)."""
    for line in spool:
        if line.endswith(b"\n"):
            line = line[:-2] if line.endswith(b"\r\n") else line[:-1]
        yield line


def _copy_object(objects: ObjectStore, url: str, key: str, bucket: str, spool: IO[bytes], max_bytes: int) -> None:
    try:
        size = objects.size(key, bucket=bucket)
    except Exception as exc:
        raise SourceError(f"input_file_url {url!r}: cannot read the object ({exc})") from exc
    if size > max_bytes:
        raise SourceError(f"input_file_url {url!r}: {size} bytes is over the {max_bytes}-byte limit")
    body = objects.open(key, bucket=bucket)
    try:
        seen = 0
        for block in body.iter_chunks(LINE_READ_BYTES):
            seen += len(block)
            if seen > max_bytes:  # it grew since its size was read
                raise SourceError(f"input_file_url {url!r}: more than the {max_bytes}-byte limit")
            spool.write(block)
    finally:
        body.close()


async def _check(policy: UrlPolicy, url: str) -> Pinned:
    try:
        return await asyncio.to_thread(policy.pinned, url, param="input_file_url")  # a DNS lookup: blocking
    except UrlRefusedError as exc:
        raise SourceError(str(exc)) from None


async def _copy_http(url: str, spool: IO[bytes], max_bytes: int, policy: UrlPolicy) -> None:
    """An http(s) URL must pass `policy`, and so must every redirect."""
    pinned = await _check(policy, url)
    seen = 0
    try:
        async with httpx.AsyncClient(timeout=READ_TIMEOUT_S, follow_redirects=False) as http:
            target = url
            for _hop in range(MAX_REDIRECTS + 1):
                # To the address the check accepted, not to a second lookup that may answer otherwise.
                async with http.stream(
                    "GET", pinned.url, headers=pinned.headers, extensions=pinned.extensions
                ) as response:
                    if response.is_redirect:
                        target = urljoin(target, response.headers["location"])
                        pinned = await _check(policy, target)  # a redirect is a new URL: it passes the policy too
                        continue
                    if not response.is_success:
                        raise SourceError(f"input_file_url {url!r}: HTTP {response.status_code}")
                    async for block in response.aiter_bytes():
                        seen += len(block)
                        if seen > max_bytes:
                            raise SourceError(f"input_file_url {url!r}: more than the {max_bytes}-byte limit")
                        spool.write(block)
                    return
            raise SourceError(f"input_file_url {url!r}: more than {MAX_REDIRECTS} redirects")
    except httpx.HTTPError as exc:
        raise SourceError(f"input_file_url {url!r}: {type(exc).__name__}: {exc}") from exc
