"""The batch API: OpenAI's /v1/files and /v1/batches, and the seeds' /v1/batch, on one job store.

Run: `python -m runtime.batch.api --host 0.0.0.0 --port 8100` (settings from BATCH_* variables).

This module makes the app (its error envelope, request metrics and routers) and serves it; the
routes are in routes_files.py, routes_batches.py, routes_seeds.py and routes_operations.py, and
what they share (state, the caller's key, ownership checks) in api_common.py.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException as StarletteHTTPException

from runtime import tlsfiles
from runtime.batch import auth, logs, metrics, routes_batches, routes_files, routes_operations, routes_seeds
from runtime.batch.api_common import ApiException, State, error_response, unavailable_response
from runtime.batch.guard import RequestGuard
from runtime.batch.models import ApiError
from runtime.batch.settings import BatchSettings
from runtime.batch.sources import SourceError

log = logging.getLogger("runtime.batch.api")


def create_app(settings: BatchSettings) -> FastAPI:
    state = State(settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await asyncio.to_thread(state.objects.ensure_bucket)
        # The operator's key (the stack output batchApiKey): an admin, it sees every tenant's objects. It
        # replaces the one the API started with before, so a rotated-out key is refused from now on.
        await auth.set_bootstrap_key(state.redis, settings.bootstrap_api_key.get_secret_value())
        yield
        await state.redis.aclose()

    # /openapi.json needs a key like every route but /health (guard); the /docs and /redoc pages are off:
    # a browser that opens them cannot send the key for the schema they load.
    app = FastAPI(title="vllm-gb10 batch API", version="1.0", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.batch = state
    add_error_envelope(app)
    app.add_middleware(RequestGuard, state=state)  # inside count_requests, which counts its 401s and 413s too

    @app.middleware("http")
    async def count_requests(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        response = await call_next(request)
        route = request.scope.get("route")
        metrics.api_requests.labels(getattr(route, "path", "unmatched"), str(response.status_code)).inc()
        return response

    for module in (routes_operations, routes_files, routes_batches, routes_seeds):
        app.include_router(module.router)
    return app


def add_error_envelope(app: FastAPI) -> None:
    """OpenAI's error envelope ({"error": {...}}) on every error the app answers with."""

    @app.exception_handler(ApiException)
    async def api_error(_request: Request, exc: ApiException) -> JSONResponse:
        return error_response(exc.status, exc.error, exc.headers)

    @app.exception_handler(SourceError)
    async def unreadable_input(_request: Request, exc: SourceError) -> JSONResponse:
        """input_file_url cannot be read: when it is opened, or midway while its lines are checked."""
        error = ApiError(message=str(exc), code="invalid_input_file", param="input_file_url")
        return JSONResponse({"error": error.model_dump()}, status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        """404 for an unknown route, 405 for a wrong method, 413 for a body over the limit (guard): OpenAI's
        error envelope, as for every error."""
        code = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}.get(exc.status_code)
        error = ApiError(message=str(exc.detail), code=code)
        return JSONResponse({"error": error.model_dump()}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RedisError)
    async def queue_unavailable(_request: Request, exc: RedisError) -> JSONResponse:
        """Redis away for longer than the API waits: retryable, as OpenAI's clients treat a 503."""
        log.warning("Redis unavailable: %r", exc)
        return unavailable_response(exc)

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
        internal = routes_operations.internal_app(app.state.batch)
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
