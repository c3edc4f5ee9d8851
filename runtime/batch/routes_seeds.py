"""The seeds' batch API (/v1/batch): a job from an input URL, its status with throughput, its results."""

from __future__ import annotations

import asyncio
import tempfile
import time
import uuid

from fastapi import APIRouter, Request

from runtime.batch.api_common import (
    ApiException,
    ApiState,
    Caller,
    RoomForWork,
    State,
    checked_url,
    estimate_completion,
    existing_batch,
    submit,
)
from runtime.batch.auth import Principal
from runtime.batch.models import (
    ApiError,
    SeedJobCreated,
    SeedJobRequest,
    SeedJobStatus,
    SeedProgress,
    SeedResults,
    SeedStats,
    SeedThroughput,
)
from runtime.batch.sources import SourceError, copy_input, s3_key, spooled_lines
from runtime.batch.storage import file_key
from runtime.batch.validation import not_offered

router = APIRouter()
SPOOL_MEMORY_BYTES = 1024 * 1024


@router.post("/v1/batch")
async def create_seed_job(
    state: ApiState, principal: Caller, _room: RoomForWork, body: SeedJobRequest
) -> SeedJobCreated:
    settings = state.settings
    if body.model not in settings.offered_models:
        message = not_offered(body.model, settings.offered_models)
        raise ApiException(400, ApiError(message=message, code="model_not_found", param="model"))
    if body.webhook_url is not None:
        checked_url(state, body.webhook_url, "webhook_url")
    key = s3_key(body.input_file_url, settings.s3_bucket)
    if key is not None:
        await owned_input(state, principal, body.input_file_url, key)
    file_id = f"file-{uuid.uuid4().hex}"
    # the input, copied whole before a line is checked: on disk past 1 MiB, so many intakes at once hold
    # little memory; the same bytes become the job's input file
    spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY_BYTES)
    try:
        await copy_input(
            state.objects,
            body.input_file_url,
            spool,
            settings.max_file_bytes,
            bucket=settings.s3_bucket,
            policy=state.url_policy,
            deadline_s=settings.input_url_timeout_seconds,
        )
        size = spool.tell()
        spool.seek(0)
        metadata = {k: str(v) for k, v in body.metadata.model_dump(mode="json").items() if v is not None}
        batch = await submit(
            state,
            principal.key_id,
            input_file_id=file_id,
            lines=spooled_lines(spool),
            endpoint=None,
            metadata=metadata,
            priority=body.metadata.priority,
            webhook_url=body.webhook_url,
            invalid_lines=settings.invalid_lines,
            model=body.model,
        )
        spool.seek(0)
        await asyncio.to_thread(state.objects.upload, file_key(file_id), spool)
    finally:
        spool.close()
    await state.store.record_file(
        file_id,
        owner=principal.key_id,
        size=size,
        filename=body.input_file_url.rsplit("/", 1)[-1] or "input.jsonl",
        purpose="batch",
        retention_seconds=settings.retention_seconds,
    )
    return SeedJobCreated(
        job_id=batch.id,
        status=batch.status,
        created_at=batch.created_at,
        estimated_completion=await estimate_completion(state, batch),
    )


@router.get("/v1/batch/{job_id}")
async def seed_job_status(state: ApiState, principal: Caller, job_id: str) -> SeedJobStatus:
    batch = await existing_batch(state, job_id, principal)
    counts = batch.request_counts
    done = counts.completed + counts.failed
    ended = batch.completed_at or batch.cancelled_at or batch.expired_at or batch.failed_at or time.time()
    # OpenAI timestamps are whole seconds: a job shorter than one counts as one second long
    elapsed = max(ended - batch.in_progress_at, 1.0) if batch.in_progress_at else 0.0
    rate = done / elapsed if elapsed else 0.0
    remaining = counts.total - done
    return SeedJobStatus(
        job_id=batch.id,
        status=batch.status,
        created_at=batch.created_at,
        progress=SeedProgress(
            completed=done, total=counts.total, percent=round(100 * done / counts.total, 2) if counts.total else 0
        ),
        throughput=SeedThroughput(
            req_per_sec=round(rate, 3), estimated_remaining=int(remaining / rate) if rate > 0 else None
        ),
        estimated_completion=None if batch.status.terminal else await estimate_completion(state, batch),
        metadata=batch.metadata,
    )


@router.get("/v1/batch/{job_id}/results")
async def seed_job_results(state: ApiState, principal: Caller, job_id: str, request: Request) -> SeedResults:
    """The result files as URLs of this API (`/v1/files/{id}/content`, fetched with the caller's key):
    a URL presigned for the S3 server would name its internal address, which users cannot reach."""
    batch = await existing_batch(state, job_id, principal)
    if not batch.status.terminal:
        raise ApiException(
            409,
            ApiError(message=f"job {job_id} is {batch.status.value}; results come when it ends", code="not_ready"),
        )
    if batch.output_file_id is None and batch.error_file_id is None:
        raise ApiException(404, ApiError(message=f"job {job_id} produced no results", code="no_results"))
    stats = await state.store.stats(job_id)
    ends = [
        f.expires_at
        for f in [await state.store.get_file(i) for i in (batch.output_file_id, batch.error_file_id) if i]
        if f
    ]
    expires_at = min(e for e in ends if e) if ends else int(time.time())
    base = str(request.base_url).rstrip("/")  # the address the caller reached this API at

    def url(file_id: str | None) -> str | None:
        return f"{base}/v1/files/{file_id}/content" if file_id else None

    return SeedResults(
        job_id=job_id,
        results_url=url(batch.output_file_id or batch.error_file_id),
        errors_url=url(batch.error_file_id),
        expires_at=expires_at,
        stats=SeedStats(
            total=batch.request_counts.total,
            successful=batch.request_counts.completed,
            failed=batch.request_counts.failed,
            avg_response_time=stats.get("avg_response_time"),
        ),
    )


async def owned_input(state: State, principal: Principal, url: str, key: str) -> None:
    """An s3:// input names one of the caller's files (files/<file id>, unexpired, its key's own): the
    batch bucket also holds every tenant's inputs, outputs and chunks, and the Redis backups. An admin
    (the operator) may name any object there. The refusal is the same whether or not the object exists."""
    if principal.admin:
        return
    file_id = key.removeprefix("files/") if key.startswith("files/") else ""
    record = await state.store.get_file(file_id) if file_id and "/" not in file_id else None
    if (
        record is None
        or (record.expires_at is not None and record.expires_at <= time.time())
        or not principal.owns(record.owner)
    ):
        raise SourceError(
            f"input_file_url {url!r}: not one of your files; an s3:// input names a file this key uploaded, "
            f"s3://{state.settings.s3_bucket}/files/<file id> (POST /v1/files)"
        )
