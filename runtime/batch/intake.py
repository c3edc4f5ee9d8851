"""From an uploaded input file to a queued job: validate every line, write chunk objects, enqueue.

Runs before the job exists, so a refused file leaves nothing behind: no batch record, no chunk
objects. Lines stream from S3; memory holds the chunk being filled and the few being uploaded, the
custom_ids seen so far sit in SQLite (runtime.batch.custom_ids), and with `error_file` the bad lines' errors.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import deque
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor

from runtime.batch.jobs import JobStore
from runtime.batch.models import Batch, BatchError, BatchErrors, BatchStatus, JobPlan, Priority, RequestCounts
from runtime.batch.settings import BatchSettings, InvalidLines
from runtime.batch.storage import ObjectStore, chunk_input_key, invalid_lines_key
from runtime.batch.validation import FileRejectedError, LineValidator, RequestLine

UPLOADS_IN_FLIGHT = 8
CHUNK_GROWTH_DIVISOR = 50  # a chunk holds at most 2% of the requests before it (beyond the first chunks)


class InputRefusedError(ValueError):
    """The input cannot become a job; `error` names the line (or the whole file)."""

    def __init__(self, error: BatchError):
        super().__init__(error.message)
        self.error = error


def new_batch_id() -> str:
    return f"batch_{uuid.uuid4().hex}"


def chunk_size_after(requests_before: int, settings: BatchSettings) -> int:
    """The size of the chunk that starts after `requests_before` requests: `chunk_size` at first, then 2% of
    what came before, up to `chunk_size_max`. Progress (counted per chunk) still moves in steps of at most
    2% of the job, while a big job has a few hundred chunks instead of thousands: each chunk costs an S3
    read, an S3 write and a Redis commit, and the output join reads one part per chunk."""
    grown = min(settings.chunk_size_max, requests_before // CHUNK_GROWTH_DIVISOR)
    return max(settings.chunk_size, grown)


def split_input(
    objects: ObjectStore,
    lines: Iterable[bytes],
    *,
    batch_id: str,
    endpoint: str | None,
    endpoints: tuple[str, ...],
    settings: BatchSettings,
    invalid_lines: InvalidLines,
    model: str | None = None,
) -> tuple[int, int, int, str, str]:
    """Write batches/<id>/in/<n>.jsonl; returns (valid, invalid, chunks, endpoint, model). Blocking."""
    limit = settings.max_requests_per_job
    validator = LineValidator(
        models=settings.offered_models, endpoint=endpoint, model=model, endpoints=endpoints, max_lines=limit
    )
    buffer: list[bytes] = []  # the chunk's lines (RequestLine.chunk_line)
    errors: list[BatchError] = []
    chunks = valid = 0

    pool = ThreadPoolExecutor(UPLOADS_IN_FLIGHT)  # chunk uploads overlap with validating the next lines
    uploads: deque[Future[None]] = deque()

    def flush() -> None:
        nonlocal chunks
        data = b"\n".join(buffer)
        while len(uploads) >= UPLOADS_IN_FLIGHT:  # memory holds a few chunks, however slow S3 is
            uploads.popleft().result()
        uploads.append(pool.submit(objects.put, chunk_input_key(batch_id, chunks), data))
        chunks += 1
        buffer.clear()

    target = chunk_size_after(0, settings)
    try:
        for number, raw in enumerate(lines, start=1):
            checked = validator.check(number, raw)
            if checked is None:
                continue
            if isinstance(checked, BatchError):
                if invalid_lines == "reject":
                    raise InputRefusedError(checked)
                errors.append(checked)
                continue
            buffer.append(RequestLine.chunk_line(number, raw))
            valid += 1
            if len(buffer) >= target:
                flush()
                target = chunk_size_after(valid, settings)
        if buffer:
            flush()
        if valid == 0 and not errors:
            raise InputRefusedError(BatchError(code="empty_file", message="the input file has no requests"))
        if errors:
            objects.put(invalid_lines_key(batch_id), _error_lines(errors))
        while uploads:
            uploads.popleft().result()
    except BaseException as exc:  # refused, or the source failed midway: leave no chunk objects behind
        pool.shutdown(wait=True)
        objects.delete_prefix(f"batches/{batch_id}/")
        if isinstance(exc, FileRejectedError):
            raise InputRefusedError(exc.error) from None
        raise
    finally:
        pool.shutdown(wait=True)
        validator.close()
    return (
        valid,
        len(errors),
        chunks,
        validator.endpoint or (endpoint or endpoints[0]),
        validator.model or settings.model,
    )


def _error_lines(errors: list[BatchError]) -> bytes:
    rows = [
        {
            "id": f"batch_req_line_{e.line}",
            "custom_id": e.custom_id,
            "response": None,
            "error": {"code": e.code, "message": e.message, "line": e.line, "param": e.param},
        }
        for e in errors
    ]
    return ("\n".join(json.dumps(r) for r in rows) + "\n").encode()


async def create_job(
    store: JobStore,
    objects: ObjectStore,
    settings: BatchSettings,
    *,
    input_file_id: str,
    lines: Iterable[bytes],
    endpoint: str | None,
    endpoints: tuple[str, ...],
    priority: Priority,
    metadata: dict[str, str] | None,
    webhook_url: str | None,
    key_id: str,
    invalid_lines: InvalidLines,
    output_retention_seconds: int | None = None,
    model: str | None = None,
) -> Batch:
    batch_id = new_batch_id()
    valid, invalid, chunks, endpoint, model = await asyncio.to_thread(
        split_input,
        objects,
        lines,
        batch_id=batch_id,
        endpoint=endpoint,
        endpoints=endpoints,
        settings=settings,
        invalid_lines=invalid_lines,
        model=model,
    )
    now = int(time.time())
    batch = Batch(
        id=batch_id,
        endpoint=endpoint,
        input_file_id=input_file_id,
        status=BatchStatus.VALIDATING,
        created_at=now,
        expires_at=now + settings.completion_window_seconds,
        request_counts=RequestCounts(total=valid + invalid, failed=invalid),
        metadata=metadata,
        model=model,
        errors=None,
    )
    if invalid:
        batch.errors = BatchErrors(
            data=[BatchError(code="invalid_lines", message=f"{invalid} input lines are in the error file")]
        )
    plan = JobPlan(
        batch_id=batch_id,
        model=model,
        priority=priority,
        chunks=chunks,
        chunk_size=settings.chunk_size,
        valid_requests=valid,
        invalid_lines=invalid,
        webhook_url=webhook_url,
        key_id=key_id,
        output_retention_seconds=output_retention_seconds,
    )
    await store.create(batch, plan, retention_seconds=settings.retention_seconds)
    return batch
