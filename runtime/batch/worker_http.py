"""The worker's own HTTP server: /health (ready, heartbeat recent) and /metrics for Prometheus."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Protocol

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from runtime.batch import metrics


class WorkerState(Protocol):
    ready: bool
    last_beat: float
    worker_id: str


def health_app(worker: WorkerState) -> Starlette:
    async def health(_request: Request) -> JSONResponse:
        beat_age = time.monotonic() - worker.last_beat
        healthy = worker.ready and beat_age < 30
        body = {"ready": worker.ready, "worker_id": worker.worker_id, "heartbeat_age_s": round(beat_age, 1)}
        return JSONResponse(body, status_code=200 if healthy else 503)

    async def metrics_endpoint(_request: Request) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return Starlette(routes=[Route("/health", health), Route("/metrics", metrics_endpoint)])


class SignalFreeServer(uvicorn.Server):
    """uvicorn without its own SIGTERM/SIGINT handling: the worker's handlers stop it (and give its job back)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield
