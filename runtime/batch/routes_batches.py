"""OpenAI's /v1/batches (create, retrieve, cancel, list) and /v1/models (what a batch may name)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from runtime.batch import webhooks
from runtime.batch.api_common import (
    ApiException,
    ApiState,
    Caller,
    ExpiresAfter,
    MetadataKey,
    MetadataValue,
    RoomForWork,
    checked_url,
    existing_batch,
    existing_file,
    expiry_seconds,
    job_options,
    not_found,
    submit,
)
from runtime.batch.models import ApiError, Batch, BatchList, BatchStatus, Model, ModelList
from runtime.batch.storage import file_key

router = APIRouter()


class CreateBatch(BaseModel):
    input_file_id: str
    endpoint: str
    completion_window: str = "24h"
    metadata: Annotated[dict[MetadataKey, MetadataValue], Field(max_length=16)] | None = None  # OpenAI's limits
    output_expires_after: ExpiresAfter | None = None


LIVE_WORKER_SECONDS = 30  # a worker whose heartbeat is older than this is not counted as loading anything


@router.get("/v1/models")
async def list_models(state: ApiState, _principal: Caller) -> ModelList:
    """The models a batch may name (each request's body.model), the default first, and which are loaded."""
    loaded = await state.store.loaded_models(LIVE_WORKER_SECONDS)
    return ModelList(
        data=[
            Model(id=model, created=state.started_at, loaded=(model in loaded) if loaded else None)
            for model in state.settings.offered_models
        ]
    )


async def with_wait_reason(state: ApiState, batch: Batch) -> Batch:
    """A queued job whose model no live worker has loaded says so (it waits for a switch, it does not fail)."""
    if batch.status != BatchStatus.VALIDATING or batch.status_reason or batch.model is None:
        return batch
    loaded = await state.store.loaded_models(LIVE_WORKER_SECONDS)
    if not loaded or batch.model in loaded:
        return batch
    reason = f"waiting for model {batch.model!r} to be loaded (loaded now: {', '.join(sorted(map(repr, loaded)))})"
    return batch.model_copy(update={"status_reason": reason})


@router.post("/v1/batches")
async def create_batch(state: ApiState, principal: Caller, _room: RoomForWork, body: CreateBatch) -> Batch:
    if body.endpoint not in state.endpoints:
        raise ApiException(
            400,
            ApiError(message=f"endpoint must be one of {', '.join(state.endpoints)}", param="endpoint"),
        )
    if body.completion_window != "24h":
        raise ApiException(400, ApiError(message="completion_window must be '24h'", param="completion_window"))
    await existing_file(state, body.input_file_id, principal)
    output_retention = expiry_seconds(state.settings, body.output_expires_after, "output_expires_after")
    priority, mode = job_options(state.settings, body.metadata)
    webhook_url = (body.metadata or {}).get("webhook_url")
    if webhook_url is not None:
        checked_url(state, webhook_url, "metadata.webhook_url")
    return await submit(
        state,
        principal.key_id,
        input_file_id=body.input_file_id,
        lines=state.objects.lines(file_key(body.input_file_id)),
        endpoint=body.endpoint,
        metadata=body.metadata,
        priority=priority,
        webhook_url=webhook_url,
        invalid_lines=mode,
        output_retention_seconds=output_retention,
    )


@router.get("/v1/batches/{batch_id}")
async def get_batch(state: ApiState, principal: Caller, batch_id: str) -> Batch:
    return await with_wait_reason(state, await existing_batch(state, batch_id, principal))


@router.post("/v1/batches/{batch_id}/cancel")
async def cancel_batch(state: ApiState, principal: Caller, batch_id: str) -> Batch:
    batch = await existing_batch(state, batch_id, principal)
    if batch.status in (BatchStatus.COMPLETED, BatchStatus.FAILED, BatchStatus.EXPIRED):
        raise ApiException(
            409, ApiError(message=f"batch {batch_id} is already {batch.status.value}", code="batch_not_cancellable")
        )
    cancelled = await state.store.cancel(batch_id, retention_seconds=state.settings.retention_seconds)
    if cancelled is None:  # its record expired meanwhile
        raise not_found("batch", batch_id)
    if cancelled.status == BatchStatus.CANCELLED and batch.status != BatchStatus.CANCELLED:
        plan = await state.store.plan(batch_id)
        if plan.webhook_url:
            await webhooks.enqueue(state.redis, plan.webhook_url, cancelled, plan.key_id)
    return cancelled


@router.get("/v1/batches")
async def list_batches(
    state: ApiState, principal: Caller, limit: Annotated[int, Query(ge=1, le=100)] = 20, after: str | None = None
) -> BatchList:
    """The caller's batches, newest first (an admin key lists every tenant's)."""
    owner = None if principal.admin else principal.key_id
    batches, more = await state.store.list_batches(limit=limit, after=after, owner=owner)
    return BatchList(
        data=batches,
        first_id=batches[0].id if batches else None,
        last_id=batches[-1].id if batches else None,
        has_more=more,
    )
