"""/health and /metrics: keyless on the internal (cluster) listener for checks and Prometheus; on the
public listener /health stays open and /metrics needs an admin key (it names every tenant's jobs)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from runtime.batch import metrics
from runtime.batch.api_common import ApiException, ApiState, Caller, State
from runtime.batch.models import ApiError, BatchStatus

router = APIRouter()


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


@router.get("/health")
async def health(state: ApiState) -> dict[str, Any]:
    return await health_body(state)


@router.get("/metrics")
async def prometheus(state: ApiState, principal: Caller) -> Response:
    """On the public address only with an admin key; Prometheus scrapes the internal listener instead."""
    if not principal.admin:
        raise ApiException(403, ApiError(message="/metrics needs an admin key", code="forbidden"))
    return await metrics_response(state)


def internal_app(state: State) -> FastAPI:
    """/health and /metrics without a key, for Prometheus: served only on the internal (cluster) address."""
    app = FastAPI(title="vllm-gb10 batch API (internal)", openapi_url=None, docs_url=None, redoc_url=None)

    @app.get("/health")
    async def internal_health() -> dict[str, Any]:
        return await health_body(state)

    @app.get("/metrics")
    async def internal_metrics() -> Response:
        return await metrics_response(state)

    return app
