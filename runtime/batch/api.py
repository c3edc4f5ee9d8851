"""The batch API: OpenAI's /v1/files and /v1/batches, and the seeds' /v1/batch, on one job store.

Run: `python -m runtime.batch.api --host 0.0.0.0 --port 8100` (settings from BATCH_* variables).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal

import uvicorn
from fastapi import Depends, FastAPI, File, Form, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field, StringConstraints, ValidationError
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException as StarletteHTTPException

from runtime import tlsfiles
from runtime.batch import auth, keys, logs, metrics, redis_client, webhooks
from runtime.batch.intake import InputRefusedError, create_job
from runtime.batch.jobs import JobStore, priority_of
from runtime.batch.models import (
    ENDPOINTS,
    ApiError,
    Batch,
    BatchList,
    BatchStatus,
    FileList,
    FileObject,
    Model,
    ModelList,
    Priority,
    SeedJobCreated,
    SeedJobRequest,
    SeedJobStatus,
    SeedProgress,
    SeedResults,
    SeedStats,
    SeedThroughput,
)
from runtime.batch.settings import BatchSettings, InvalidLines
from runtime.batch.sources import SourceError, open_lines
from runtime.batch.storage import ObjectStore, file_key
from runtime.batch.urls import UrlRefusedError

OFFLINE_ENDPOINTS = ("/v1/chat/completions", "/v1/embeddings")
log = logging.getLogger("runtime.batch.api")
API_REDIS_OUTAGE_S = 10.0  # longest a request waits for Redis before it is answered 503


class ApiException(Exception):  # noqa: N818 - mirrors FastAPI's HTTPException
    def __init__(self, status: int, error: ApiError, headers: dict[str, str] | None = None):
        super().__init__(error.message)
        self.status, self.error, self.headers = status, error, headers


def not_found(what: str, ident: str) -> ApiException:
    return ApiException(404, ApiError(message=f"No {what} found with id '{ident}'.", code="not_found"))


class ExpiresAfter(BaseModel):
    """OpenAI's expires_after / output_expires_after: seconds after the object's creation."""

    anchor: Literal["created_at"]
    seconds: int = Field(ge=3600, le=2_592_000)


MetadataKey = Annotated[str, StringConstraints(max_length=64)]
MetadataValue = Annotated[str, StringConstraints(max_length=512)]


class CreateBatch(BaseModel):
    input_file_id: str
    endpoint: str
    completion_window: str = "24h"
    metadata: Annotated[dict[MetadataKey, MetadataValue], Field(max_length=16)] | None = None  # OpenAI's limits
    output_expires_after: ExpiresAfter | None = None


class State:
    def __init__(self, settings: BatchSettings):
        self.settings = settings
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


async def caller(request: Request) -> auth.Principal:
    """The calling key, after authentication and the rate limit."""
    state: State = request.app.state.batch
    settings = state.settings
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
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
    logs.job_id.set(None)
    return principal


Caller = Annotated[auth.Principal, Depends(caller)]


async def metrics_response(state: State) -> Response:
    """Prometheus text: gauges read from Redis at scrape time, then every registered metric."""
    metrics.queue_depth.set(await state.store.queue_depth())
    batches = await state.store.active()  # O(jobs not yet ended), not O(history)
    by_status = Counter(batch.status for batch in batches)
    for status in BatchStatus:
        if not status.terminal:  # ended jobs: the worker's batch_jobs_finished_total
            metrics.jobs_by_status.labels(status.value).set(by_status[status])
    metrics.job_progress.clear()
    metrics.job_last_progress.clear()
    for batch in batches:
        if batch.status in (BatchStatus.IN_PROGRESS, BatchStatus.FINALIZING, BatchStatus.CANCELLING):
            counts = batch.request_counts
            done = counts.completed + counts.failed
            metrics.job_progress.labels(batch.id).set(done / counts.total if counts.total else 0)
            progress_at = await state.store.progress_at(batch.id)
            metrics.job_last_progress.labels(batch.id).set(progress_at or batch.in_progress_at or batch.created_at)
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)


async def health_body(state: State) -> dict[str, Any]:
    await state.redis.ping()
    workers = await state.store.live_workers(within_seconds=30)
    return {"status": "ok", "workers": len(workers), "queue_depth": await state.store.queue_depth()}


def internal_app(state: State) -> FastAPI:
    """/health and /metrics without a key, for Prometheus: served only on the internal (cluster) address."""
    app = FastAPI(title="vllm-gb10 batch API (internal)", openapi_url=None, docs_url=None, redoc_url=None)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return await health_body(state)

    @app.get("/metrics")
    async def prometheus() -> Response:
        return await metrics_response(state)

    return app


def create_app(settings: BatchSettings) -> FastAPI:
    state = State(settings)
    started_at = int(time.time())

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await asyncio.to_thread(state.objects.ensure_bucket)
        # The operator's key (the stack output batchApiKey): an admin, it sees every tenant's objects.
        await auth.add_key(state.redis, settings.bootstrap_api_key.get_secret_value(), "bootstrap", admin=True)
        yield
        await state.redis.aclose()

    app = FastAPI(title="vllm-gb10 batch API", version="1.0", lifespan=lifespan)
    app.state.batch = state

    @app.exception_handler(ApiException)
    async def api_error(_request: Request, exc: ApiException) -> JSONResponse:
        return JSONResponse({"error": exc.error.model_dump()}, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(SourceError)
    async def unreadable_input(_request: Request, exc: SourceError) -> JSONResponse:
        """input_file_url cannot be read: when it is opened, or midway while its lines are checked."""
        error = ApiError(message=str(exc), code="invalid_input_file", param="input_file_url")
        return JSONResponse({"error": error.model_dump()}, status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        """404 for an unknown route, 405 for a wrong method: OpenAI's error envelope, as for every error."""
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        error = ApiError(message=str(exc.detail), code=code)
        return JSONResponse({"error": error.model_dump()}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RedisError)
    async def queue_unavailable(_request: Request, exc: RedisError) -> JSONResponse:
        """Redis away for longer than the API waits: retryable, as OpenAI's clients treat a 503."""
        log.warning("Redis unavailable: %r", exc)
        error = ApiError(
            message="The job store is unavailable; retry shortly.", type="server_error", code="unavailable"
        )
        return JSONResponse({"error": error.model_dump()}, status_code=503, headers={"Retry-After": "5"})

    @app.exception_handler(Exception)
    async def internal_error(_request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error", exc_info=exc)
        error = ApiError(message="Internal error; see the batch API's log.", type="server_error", code="internal_error")
        return JSONResponse({"error": error.model_dump()}, status_code=500)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"][1:]) or None
        error = ApiError(message=f"{param}: {first['msg']}" if param else first["msg"], param=param)
        return JSONResponse({"error": error.model_dump()}, status_code=400)

    @app.middleware("http")
    async def count_requests(request: Request, call_next):
        response = await call_next(request)
        route = request.scope.get("route")
        metrics.api_requests.labels(getattr(route, "path", "unmatched"), str(response.status_code)).inc()
        return response

    # --- health and metrics --------------------------------------------------------------

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return await health_body(state)

    @app.get("/metrics")
    async def prometheus(principal: Caller) -> Response:
        """On the public address only with an admin key (it names every tenant's jobs); Prometheus
        scrapes the internal listener instead."""
        if not principal.admin:
            raise ApiException(403, ApiError(message="/metrics needs an admin key", code="forbidden"))
        return await metrics_response(state)

    # --- files ---------------------------------------------------------------------------

    def expiry_seconds(expires_after: ExpiresAfter | None, param: str) -> int:
        """How long a file is kept: the caller's expires_after, within what the bucket keeps (its lifecycle rule)."""
        if expires_after is None:
            return settings.retention_seconds
        if expires_after.seconds > settings.retention_seconds:
            message = f"{param}.seconds is at most {settings.retention_seconds} here (resultRetentionDays)"
            raise ApiException(400, ApiError(message=message, param=f"{param}.seconds"))
        return expires_after.seconds

    @app.post("/v1/files")
    async def upload_file(
        principal: Caller,
        file: Annotated[UploadFile, File()],
        purpose: Annotated[str, Form()],
        anchor: Annotated[str | None, Form(alias="expires_after[anchor]")] = None,
        seconds: Annotated[int | None, Form(alias="expires_after[seconds]")] = None,
    ) -> FileObject:
        if purpose != "batch":
            raise ApiException(400, ApiError(message=f"purpose {purpose!r}: only 'batch' is accepted", param="purpose"))
        expires_after = None
        if anchor is not None or seconds is not None:
            try:
                expires_after = ExpiresAfter.model_validate({"anchor": anchor, "seconds": seconds})
            except ValidationError as exc:
                first = exc.errors()[0]
                param = f"expires_after[{first['loc'][0]}]"
                raise ApiException(400, ApiError(message=f"{param}: {first['msg']}", param=param)) from None
        retention = expiry_seconds(expires_after, "expires_after")
        size = file.size if file.size is not None else 0
        if size > settings.max_file_bytes:
            raise ApiException(
                400,
                ApiError(
                    message=f"file is {size} bytes; the limit is {settings.max_file_bytes}",
                    code="file_too_large",
                    param="file",
                ),
            )
        file_id = f"file-{uuid.uuid4().hex}"
        await asyncio.to_thread(state.objects.upload, file_key(file_id), file.file)
        stored = await state.store.record_file(
            file_id,
            owner=principal.key_id,
            size=size,
            filename=file.filename or "input.jsonl",
            purpose="batch",
            retention_seconds=retention,
        )
        return stored.public()

    @app.get("/v1/files")
    async def list_files(
        principal: Caller,
        purpose: str | None = None,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000,
        order: Literal["asc", "desc"] = "desc",
        after: str | None = None,
    ) -> FileList:
        """The caller's files (an admin key: every tenant's), as OpenAI lists them."""
        owner = None if principal.admin else principal.key_id
        files, more = await state.store.list_files(
            owner=owner, purpose=purpose, limit=limit, newest_first=order == "desc", after=after
        )
        data = [f.public() for f in files]
        return FileList(
            data=data, first_id=data[0].id if data else None, last_id=data[-1].id if data else None, has_more=more
        )

    @app.get("/v1/models")
    async def list_models(_principal: Caller) -> ModelList:
        """The model a batch may name (each request's body.model)."""
        return ModelList(data=[Model(id=settings.model, created=started_at)])

    async def existing_file(file_id: str, principal: auth.Principal) -> FileObject:
        """The file, if it exists and the caller's key owns it: another tenant's file is not found (404)."""
        record = await state.store.get_file(file_id)
        if (
            record is None
            or (record.expires_at is not None and record.expires_at <= time.time())
            or not principal.owns(record.owner)
        ):
            raise not_found("file", file_id)
        return record.public()

    @app.get("/v1/files/{file_id}")
    async def get_file(principal: Caller, file_id: str) -> FileObject:
        return await existing_file(file_id, principal)

    @app.get("/v1/files/{file_id}/content")
    async def file_content(principal: Caller, file_id: str) -> StreamingResponse:
        await existing_file(file_id, principal)
        body = await asyncio.to_thread(state.objects.open, file_key(file_id))
        return StreamingResponse(_iterate(body), media_type="application/jsonl")

    @app.delete("/v1/files/{file_id}")
    async def delete_file(principal: Caller, file_id: str) -> dict[str, Any]:
        await existing_file(file_id, principal)
        await asyncio.to_thread(state.objects.delete, file_key(file_id))
        record = await state.store.get_file(file_id)
        await state.store.delete_file(file_id, record.owner if record else None)
        return {"id": file_id, "object": "file", "deleted": True}

    # --- OpenAI batches ------------------------------------------------------------------

    async def submit(
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
    ) -> Batch:
        try:
            batch = await create_job(
                state.store,
                state.objects,
                settings,
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
            )
        except InputRefusedError as refused:
            error = refused.error
            raise ApiException(
                400, ApiError(message=error.message, code=error.code, param=error.param, line=error.line)
            ) from None
        logs.job_id.set(batch.id)
        return batch

    def checked_url(url: str, param: str) -> str:
        """A webhook URL the service may call (urls.UrlPolicy), else a 400 naming it."""
        try:
            state.url_policy.check(url, param=param)
        except UrlRefusedError as refused:
            raise ApiException(400, ApiError(message=str(refused), code="url_refused", param=param)) from None
        return url

    def job_options(metadata: dict[str, str] | None) -> tuple[Priority, InvalidLines]:
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

    @app.post("/v1/batches")
    async def create_batch(principal: Caller, body: CreateBatch) -> Batch:
        if body.endpoint not in state.endpoints:
            raise ApiException(
                400,
                ApiError(message=f"endpoint must be one of {', '.join(state.endpoints)}", param="endpoint"),
            )
        if body.completion_window != "24h":
            raise ApiException(400, ApiError(message="completion_window must be '24h'", param="completion_window"))
        await existing_file(body.input_file_id, principal)
        output_retention = expiry_seconds(body.output_expires_after, "output_expires_after")
        priority, mode = job_options(body.metadata)
        webhook_url = (body.metadata or {}).get("webhook_url")
        if webhook_url is not None:
            checked_url(webhook_url, "metadata.webhook_url")
        return await submit(
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

    async def existing_batch(batch_id: str, principal: auth.Principal) -> Batch:
        """The batch, if it exists and the caller's key created it: another tenant's batch is not found (404)."""
        batch = await state.store.get(batch_id)
        if batch is None or not principal.owns(await state.store.owner(batch_id)):
            raise not_found("batch", batch_id)
        logs.job_id.set(batch_id)
        return batch

    @app.get("/v1/batches/{batch_id}")
    async def get_batch(principal: Caller, batch_id: str) -> Batch:
        return await existing_batch(batch_id, principal)

    @app.post("/v1/batches/{batch_id}/cancel")
    async def cancel_batch(principal: Caller, batch_id: str) -> Batch:
        batch = await existing_batch(batch_id, principal)
        if batch.status in (BatchStatus.COMPLETED, BatchStatus.FAILED, BatchStatus.EXPIRED):
            raise ApiException(
                409, ApiError(message=f"batch {batch_id} is already {batch.status.value}", code="batch_not_cancellable")
            )
        cancelled = await state.store.cancel(batch_id, retention_seconds=settings.retention_seconds)
        if cancelled is None:  # its record expired meanwhile
            raise not_found("batch", batch_id)
        if cancelled.status == BatchStatus.CANCELLED and batch.status != BatchStatus.CANCELLED:
            plan = await state.store.plan(batch_id)
            if plan.webhook_url:
                await webhooks.enqueue(state.redis, plan.webhook_url, cancelled)
        return cancelled

    @app.get("/v1/batches")
    async def list_batches(
        principal: Caller, limit: Annotated[int, Query(ge=1, le=100)] = 20, after: str | None = None
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

    # --- the seeds' API ------------------------------------------------------------------

    @app.post("/v1/batch")
    async def create_seed_job(principal: Caller, body: SeedJobRequest) -> SeedJobCreated:
        if body.model != settings.model:
            raise ApiException(
                400, ApiError(message=f"model {body.model!r} is not served here", code="model_not_found", param="model")
            )
        if body.webhook_url is not None:
            checked_url(body.webhook_url, "webhook_url")
        lines = await asyncio.to_thread(
            open_lines,
            state.objects,
            body.input_file_url,
            settings.max_file_bytes,
            bucket=settings.s3_bucket,
            policy=state.url_policy,
        )
        file_id = f"file-{uuid.uuid4().hex}"
        spool = tempfile.SpooledTemporaryFile(max_size=16 * 1024 * 1024)
        try:
            metadata = {k: str(v) for k, v in body.metadata.model_dump(mode="json").items() if v is not None}
            batch = await submit(
                principal.key_id,
                input_file_id=file_id,
                lines=_tee(lines, spool),
                endpoint=None,
                metadata=metadata,
                priority=body.metadata.priority,
                webhook_url=body.webhook_url,
                invalid_lines=settings.invalid_lines,
            )
            size = spool.tell()
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
            estimated_completion=await estimate_completion(batch),
        )

    async def estimate_completion(batch: Batch) -> int | None:
        """When the job should end at the fleet's recent rate: what is left of the jobs running now and of
        those queued before it, then its own remainder (running or queued)."""
        rate = await state.store.throughput()
        if not rate:
            return None
        ahead = list(await state.redis.zrange(keys.QUEUE, 0, -1))
        queued_before = set(ahead[: ahead.index(batch.id)] if batch.id in ahead else [])
        work = 0
        for other in await state.store.active():
            counts = other.request_counts
            left = max(0, counts.total - counts.completed - counts.failed)
            running = other.status in (BatchStatus.IN_PROGRESS, BatchStatus.FINALIZING)
            if other.id == batch.id or running or other.id in queued_before:
                work += left
        return int(time.time() + work / rate)

    @app.get("/v1/batch/{job_id}")
    async def seed_job_status(principal: Caller, job_id: str) -> SeedJobStatus:
        batch = await existing_batch(job_id, principal)
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
            estimated_completion=None if batch.status.terminal else await estimate_completion(batch),
            metadata=batch.metadata,
        )

    @app.get("/v1/batch/{job_id}/results")
    async def seed_job_results(principal: Caller, job_id: str, request: Request) -> SeedResults:
        """The result files as URLs of this API (`/v1/files/{id}/content`, fetched with the caller's key):
        a URL presigned for the S3 server would name its internal address, which users cannot reach."""
        batch = await existing_batch(job_id, principal)
        if not batch.status.terminal:
            raise ApiException(
                409,
                ApiError(message=f"job {job_id} is {batch.status.value}; results come when it ends", code="not_ready"),
            )
        if batch.output_file_id is None and batch.error_file_id is None:
            raise ApiException(404, ApiError(message=f"job {job_id} produced no results", code="no_results"))
        stats = json.loads(await state.redis.get(keys.stats(job_id)) or "{}")
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

    return app


def _iterate(body: Any) -> Iterator[bytes]:
    try:
        yield from body.iter_chunks(1024 * 1024)
    finally:
        body.close()


def _tee(lines: Iterator[bytes], spool: Any) -> Iterator[bytes]:
    for line in lines:
        spool.write(line + b"\n")
        yield line


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="vllm-gb10 batch API (settings from BATCH_* variables)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument(
        "--internal-host", help="address of the keyless /health and /metrics listener (the cluster address)"
    )
    parser.add_argument("--internal-port", type=int, help="port of that listener; none without it")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    if (args.internal_host is None) != (args.internal_port is None):
        parser.error("--internal-host and --internal-port go together")
    logs.configure("batch-api", args.log_level)
    try:
        tls = tlsfiles.server_files()  # the public listener speaks TLS when the stack hands it a certificate
    except tlsfiles.TlsConfigError as err:
        parser.error(str(err))
    app = create_app(BatchSettings())
    public = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_config=None,
        access_log=False,
        ssl_certfile=tls[0] if tls else None,
        ssl_keyfile=tls[1] if tls else None,
    )
    servers = [uvicorn.Server(public)]
    if args.internal_port is not None:
        internal = internal_app(app.state.batch)
        config = uvicorn.Config(internal, host=args.internal_host, port=args.internal_port, log_config=None)
        servers.append(uvicorn.Server(config))
    asyncio.run(_serve(servers))


async def _serve(servers: list[uvicorn.Server]) -> None:
    """Run the public and internal listeners together; when one stops (a signal, a bind error), stop both."""
    tasks = [asyncio.create_task(server.serve()) for server in servers]
    await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for server in servers:
        server.should_exit = True
    await asyncio.gather(*tasks)


if __name__ == "__main__":
    main()
