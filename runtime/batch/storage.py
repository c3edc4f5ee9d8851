"""Input and result objects in S3 (MinIO in production), through the S3 API only.

Keys: files/<file_id> (uploads and finished output/error files), batches/<id>/in/<chunk>.jsonl
(validated requests), batches/<id>/out|err/<chunk>-<fence>.jsonl (chunk results; the fence in the
key keeps a stale worker from overwriting what the current one committed).
"""

from __future__ import annotations

import asyncio
import builtins
import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import IO, Any

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import ClientError, ConnectionError, HTTPClientError, IncompleteReadError
from tenacity import AsyncRetrying, before_sleep_log, retry_if_exception, stop_after_delay
from tenacity import wait_exponential_jitter as jitter

from runtime.batch.bucket import MISSING_BUCKET_CODES, ensure_bucket
from runtime.batch.settings import BatchSettings

log = logging.getLogger("runtime.batch.storage")


def file_key(file_id: str) -> str:
    return f"files/{file_id}"


def chunk_input_key(batch_id: str, index: int) -> str:
    return f"batches/{batch_id}/in/{index:06d}.jsonl"


def chunk_result_key(batch_id: str, kind: str, index: int, fence: int) -> str:
    return f"batches/{batch_id}/{kind}/{index:06d}-{fence}.jsonl"


def invalid_lines_key(batch_id: str) -> str:
    return f"batches/{batch_id}/invalid.jsonl"


LINE_READ_BYTES = 64 * 1024
UPLOAD_CONFIG = TransferConfig(multipart_threshold=8 * 1024**2, multipart_chunksize=8 * 1024**2, max_concurrency=4)
# Parts held in memory, the four being sent included: s3transfer's default of ten held ~88 MB for a file of
# 80 MB or more (the API's peak grew with the upload up to that). Not an __init__ argument, but the
# attribute s3transfer's TransferManager reads.
UPLOAD_CONFIG.max_in_memory_upload_chunks = 4
THROTTLED = frozenset({"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "RequestTimeTooSkewed"})


def retryable_storage_error(exc: BaseException) -> bool:
    """True for what can succeed on a retry: S3 out of reach, a 5xx, throttling. A 403 (wrong key or
    policy), a 404 or a malformed request fails the same way again, so it is not retried."""
    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        return status >= 500 or status == 429 or exc.response.get("Error", {}).get("Code") in THROTTLED
    # botocore's connection and read errors, and the socket's own; not any OSError (a full local disk
    # while spooling fails the same way again and must end the job, not retry it for a day)
    return isinstance(
        exc, ConnectionError | HTTPClientError | IncompleteReadError | builtins.ConnectionError | builtins.TimeoutError
    )


class ObjectStore:
    """Blocking boto3 calls, with `a*` wrappers that run them off the event loop."""

    def __init__(self, settings: BatchSettings, *, backups: bool = False):
        """`backups`: as the backups' S3 user where one is set (backup_s3_*), else the service's."""
        self.bucket = settings.s3_bucket
        self.retention_days = settings.result_retention_days
        access_key, secret_key = settings.s3_access_key_id, settings.s3_secret_access_key
        if backups and settings.backup_s3_access_key_id and settings.backup_s3_secret_access_key:
            access_key, secret_key = settings.backup_s3_access_key_id, settings.backup_s3_secret_access_key
        self.client = boto3.client(
            "s3",
            endpoint_url=str(settings.s3_endpoint_url),
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key.get_secret_value(),
            region_name=settings.s3_region,
            config=Config(
                signature_version="s3v4",
                s3={"addressing_style": "path"},
                retries={"mode": "standard", "max_attempts": 3},
                connect_timeout=5,
                read_timeout=60,
                max_pool_connections=32,
            ),
        )

    def ensure_bucket(self) -> None:
        """The bucket is there (a listing, which the scoped user may do); a missing one is created with its
        expiry rule (runtime.batch.bucket), where the key may (tests, a deployment on the root key). In the
        stacks the set-up job made it and sets the rule on every `up`: the scoped user may not (s3_users)."""
        try:
            self.client.list_objects_v2(Bucket=self.bucket, MaxKeys=1)
            return
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") not in MISSING_BUCKET_CODES:
                raise
        ensure_bucket(self.client, self.bucket, self.retention_days)

    def put(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=key, Body=data)

    def upload(self, key: str, fileobj: IO[bytes]) -> None:
        """Multipart past 8 MB, four parts at a time: boto3's default of ten holds 80 MB of buffers."""
        self.client.upload_fileobj(fileobj, self.bucket, key, Config=UPLOAD_CONFIG)

    def get(self, key: str) -> bytes:
        data: bytes = self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        return data

    def open(self, key: str, bucket: str | None = None) -> Any:
        """A streaming body (iter_lines / iter_chunks) of the object."""
        return self.client.get_object(Bucket=bucket or self.bucket, Key=key)["Body"]

    def lines(self, key: str) -> Iterator[bytes]:
        """The object's lines, read 64 KiB at a time: botocore's 1 KiB reads cost intake 3.5 us a line."""
        yield from self.open(key).iter_lines(chunk_size=LINE_READ_BYTES, keepends=False)

    def size(self, key: str, bucket: str | None = None) -> int:
        size: int = self.client.head_object(Bucket=bucket or self.bucket, Key=key)["ContentLength"]
        return size

    def delete_prefix(self, prefix: str) -> None:
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
            if keys:
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": keys})

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=key)

    async def aput(self, key: str, data: bytes) -> None:
        await asyncio.to_thread(self.put, key, data)

    async def aget(self, key: str) -> bytes:
        return await asyncio.to_thread(self.get, key)


async def with_storage_retry(seconds: float, call: Callable[..., Awaitable[Any]], *args: Any) -> Any:
    """`call(*args)`, tried again for `seconds` on what a retry can cure (connection errors, 5xx,
    throttling: retryable_storage_error), never on a refused key or a missing object."""
    async for attempt in AsyncRetrying(
        stop=stop_after_delay(seconds),
        wait=jitter(multiplier=0.5, max=10),
        retry=retry_if_exception(retryable_storage_error),  # not a refused key or a missing object
        before_sleep=before_sleep_log(log, logging.WARNING),  # an S3 outage shows in the log
        reraise=True,
    ):
        with attempt:
            return await call(*args)
    raise AssertionError("unreachable")
