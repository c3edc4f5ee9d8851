"""What the batch API's routers share: its state (job store, S3, settings), the caller's key, the
OpenAI error it raises, and the checks several routes make (ownership, URLs, job options)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Annotated, Literal

from fastapi import Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, StringConstraints
from redis.exceptions import OutOfMemoryError, RedisError

from runtime.batch import auth, logs, redis_client
from runtime.batch.intake import InputRefusedError, create_job
from runtime.batch.jobs import JobStore, priority_of
from runtime.batch.models import ENDPOINTS, METADATA_VALUE_CHARS, ApiError, Batch, BatchStatus, FileObject, Priority
from runtime.batch.settings import BatchSettings, InvalidLines
from runtime.batch.storage import ObjectStore
from runtime.batch.urls import UrlRefusedError

OFFLINE_ENDPOINTS = ("/v1/chat/completions", "/v1/embeddings")
API_REDIS_OUTAGE_S = 10.0  # longest a request waits for Redis before it is answered 503


class ApiException(Exception):  # noqa: N818 - mirrors FastAPI's HTTPException
    def __init__(self, status: int, error: ApiError, headers: dict[str, str] | None = None):
        super().__init__(error.message)
        self.status, self.error, self.headers = status, error, headers


def error_response(status: int, error: ApiError, headers: dict[str, str] | None = None) -> JSONResponse:
    """OpenAI's error envelope: {"error": {message, type, param, code}}."""
    return JSONResponse({"error": error.model_dump()}, status_code=status, headers=headers)


def unavailable_response(exc: RedisError) -> JSONResponse:
    """Redis away for longer than the API waits, or full: retryable, as OpenAI's clients treat a 503."""
    if isinstance(exc, OutOfMemoryError):  # noeviction: Redis at its maxmemory refuses writes
        message = "Redis is at its memory limit (maxmemory) and refuses writes; retry once jobs end or expire."
        error = ApiError(message=message, type="server_error", code="redis_memory_full")
        return error_response(503, error, {"Retry-After": "60"})
    error = ApiError(message="The job store is unavailable; retry shortly.", type="server_error", code="unavailable")
    return error_response(503, error, {"Retry-After": "5"})


def not_found(what: str, ident: str) -> ApiException:
    return ApiException(404, ApiError(message=f"No {what} found with id '{ident}'.", code="not_found"))


class ExpiresAfter(BaseModel):
    """OpenAI's expires_after / output_expires_after: seconds after the object's creation."""

    anchor: Literal["created_at"]
    seconds: int = Field(ge=3600, le=2_592_000)


MetadataKey = Annotated[str, StringConstraints(max_length=64)]
MetadataValue = Annotated[str, StringConstraints(max_length=METADATA_VALUE_CHARS)]


class State:
    def __init__(self, settings: BatchSettings):
        self.settings = settings
        self.started_at = int(time.time())
        # A caller waits out a short Redis restart; a longer one is a 503 it can retry.
        outage = min(settings.redis_outage_seconds, API_REDIS_OUTAGE_S)
        self.redis = redis_client.connect(
            str(settings.redis_url),
            max_connections=settings.redis_max_connections,
            outage_seconds=outage,
            pool_wait_seconds=outage,  # a request beyond the pool gets its 503 too, not an endless wait
        )
        self.store = JobStore(self.redis, outage_seconds=outage)
        self.objects = ObjectStore(settings)
        self.endpoints = OFFLINE_ENDPOINTS if settings.engine == "offline" else ENDPOINTS
        self.url_policy = settings.url_policy

    async def redis_memory_used(self) -> int:
        """Bytes Redis has allocated: MEMORY STATS, which the batch ACL user may run (INFO it may not).
        Read on each request that would add work (uploads, new batches): cheap beside what they write."""
        stats = await self.redis.memory_stats()
        return int(stats["total.allocated"])


def state_of(request: Request) -> State:
    state: State = request.app.state.batch
    return state


ApiState = Annotated[State, Depends(state_of)]


async def authenticate(state: State, authorization: str) -> auth.Principal:
    """The calling key from its Authorization header, after the rate limit; ApiException (401, 429) if
    refused. runtime.batch.guard calls it before a request's body is read."""
    settings = state.settings
    scheme, _, token = authorization.partition(" ")
    principal = await auth.principal_of(state.redis, token) if scheme.lower() == "bearer" and token else None
    if principal is None:
        raise ApiException(
            401, ApiError(message="Missing or unknown API key (Authorization: Bearer …).", code="invalid_api_key")
        )
    wait = await auth.over_limit(state.redis, principal.key_id, settings.rate_limit_per_minute)
    if wait is not None:
        raise ApiException(
            429,
            ApiError(message=f"Rate limit of {settings.rate_limit_per_minute}/min reached.", code="rate_limit"),
            headers={"Retry-After": str(wait)},
        )
    return principal


async def caller(request: Request) -> auth.Principal:
    """The calling key, which runtime.batch.guard authenticated (and rate-limited) before the body was read."""
    principal = getattr(request.state, "principal", None)
    if not isinstance(principal, auth.Principal):  # a route reached without the guard: refuse, never guess
        principal = await authenticate(state_of(request), request.headers.get("authorization", ""))
    logs.job_id.set(None)
    return principal


Caller = Annotated[auth.Principal, Depends(caller)]


async def room_for_work(request: Request) -> None:
    """New files and batches only while Redis is below its memory ceiling: at maxmemory it refuses writes
    (noeviction), and a running job that cannot commit its checkpoints would stall. Reads, cancels and
    deletes go on (deleting frees memory)."""
    state = state_of(request)
    settings = state.settings
    if not settings.redis_maxmemory_bytes:
        return
    used = await state.redis_memory_used()
    threshold = settings.redis_maxmemory_bytes * settings.redis_memory_refuse_ratio
    if used >= threshold:
        message = (
            f"Redis is near its memory limit ({used} of {settings.redis_maxmemory_bytes} bytes of maxmemory used; "
            f"new work is refused from {settings.redis_memory_refuse_ratio:.0%}): no new files or batches until "
            "running jobs finish or expire. Reads, cancels and deletes still work."
        )
        raise ApiException(
            503, ApiError(message=message, type="server_error", code="redis_memory_full"), headers={"Retry-After": "60"}
        )


RoomForWork = Annotated[None, Depends(room_for_work)]


def expiry_seconds(settings: BatchSettings, expires_after: ExpiresAfter | None, param: str) -> int:
    """How long a file is kept: the caller's expires_after, within what the bucket keeps (its lifecycle rule)."""
    if expires_after is None:
        return settings.retention_seconds
    if expires_after.seconds > settings.retention_seconds:
        message = f"{param}.seconds is at most {settings.retention_seconds} here (resultRetentionDays)"
        raise ApiException(400, ApiError(message=message, param=f"{param}.seconds"))
    return expires_after.seconds


async def existing_file(state: State, file_id: str, principal: auth.Principal) -> FileObject:
    """The file, if it exists and the caller's key owns it: another tenant's file is not found (404)."""
    record = await state.store.get_file(file_id)
    if (
        record is None
        or (record.expires_at is not None and record.expires_at <= time.time())
        or not principal.owns(record.owner)
    ):
        raise not_found("file", file_id)
    return record.public()


async def existing_batch(state: State, batch_id: str, principal: auth.Principal) -> Batch:
    """The batch, if it exists and the caller's key created it: another tenant's batch is not found (404)."""
    batch = await state.store.get(batch_id)
    if batch is None or not principal.owns(await state.store.owner(batch_id)):
        raise not_found("batch", batch_id)
    logs.job_id.set(batch_id)
    return batch


async def submit(
    state: State,
    key_id: str,
    *,
    input_file_id: str,
    lines: Iterator[bytes],
    endpoint: str | None,
    metadata: dict[str, str] | None,
    priority: Priority,
    webhook_url: str | None,
    invalid_lines: InvalidLines,
    output_retention_seconds: int | None = None,
    model: str | None = None,
) -> Batch:
    """A new job from checked input lines (OpenAI's batches and the seeds' jobs alike); `model`, when given,
    is the one every line must name."""
    try:
        batch = await create_job(
            state.store,
            state.objects,
            state.settings,
            input_file_id=input_file_id,
            lines=lines,
            endpoint=endpoint,
            endpoints=state.endpoints,
            priority=priority,
            metadata=metadata,
            webhook_url=webhook_url,
            key_id=key_id,
            invalid_lines=invalid_lines,
            output_retention_seconds=output_retention_seconds,
            model=model,
        )
    except InputRefusedError as refused:
        error = refused.error
        raise ApiException(
            400, ApiError(message=error.message, code=error.code, param=error.param, line=error.line)
        ) from None
    logs.job_id.set(batch.id)
    return batch


def checked_url(state: State, url: str, param: str) -> str:
    """A webhook URL the service may call (urls.UrlPolicy), else a 400 naming it."""
    try:
        state.url_policy.check(url, param=param)
    except UrlRefusedError as refused:
        raise ApiException(400, ApiError(message=str(refused), code="url_refused", param=param)) from None
    return url


def job_options(settings: BatchSettings, metadata: dict[str, str] | None) -> tuple[Priority, InvalidLines]:
    try:
        priority = priority_of(metadata)
    except ValueError:
        raise ApiException(
            400, ApiError(message="metadata.priority must be high, normal or low", param="metadata.priority")
        ) from None
    mode = (metadata or {}).get("invalid_lines", settings.invalid_lines)
    if mode == "reject":
        return priority, "reject"
    if mode == "error_file":
        return priority, "error_file"
    raise ApiException(
        400,
        ApiError(message="metadata.invalid_lines must be reject or error_file", param="metadata.invalid_lines"),
    )


async def estimate_completion(state: State, batch: Batch) -> int | None:
    """When the job should end at the fleet's recent rate: what is left of the jobs running now and of
    those queued before it, then its own remainder (running or queued)."""
    rate = await state.store.throughput()
    if not rate:
        return None
    queued_before = await state.store.queued_before(batch.id)
    work = 0
    for other in await state.store.active():
        counts = other.request_counts
        left = max(0, counts.total - counts.completed - counts.failed)
        running = other.status in (BatchStatus.IN_PROGRESS, BatchStatus.FINALIZING)
        if other.id == batch.id or running or other.id in queued_before:
            work += left
    return int(time.time() + work / rate)
