"""The batch API's outer gate: a request is authenticated, rate-limited and size-checked before any of
its body is read.

FastAPI reads and parses a body before it runs a route's dependencies, so a key checked by a
dependency came too late: a caller with no key could make the API hold (and parse) any body it sent,
and uvicorn has no body limit of its own. This pure ASGI middleware answers 401/429 from the headers
alone, 413 when Content-Length is over the limit, and ends a streamed (chunked) body with 413 the
moment it passes the limit. What is never read stays in the kernel's socket buffers; uvicorn discards
the rest once the answer is sent.
"""

from __future__ import annotations

import logging

from fastapi import HTTPException
from redis.exceptions import RedisError
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from runtime.batch.api_common import ApiException, State, authenticate, error_response, unavailable_response
from runtime.batch.models import ApiError

log = logging.getLogger("runtime.batch.api")
OPEN_PATHS = frozenset({"/health"})  # the one route a caller without a key may reach
UPLOAD_PATH = "/v1/files"
FORM_ALLOWANCE = 64 * 1024  # an upload's multipart envelope and form fields, beyond the file itself


class RequestGuard:
    def __init__(self, app: ASGIApp, state: State) -> None:
        self.app = app
        self.state = state

    def limit_of(self, scope: Scope) -> tuple[int, str]:
        """The most bytes this request's body may have, and the setting that says so."""
        settings = self.state.settings
        if scope["method"] == "POST" and scope["path"] == UPLOAD_PATH:
            return settings.max_file_bytes + FORM_ALLOWANCE, "BATCH_MAX_FILE_BYTES, plus 64 KiB for the form"
        return settings.max_request_bytes, "BATCH_MAX_REQUEST_BYTES"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        try:
            principal = await authenticate(self.state, headers.get("authorization", ""))
        except ApiException as refused:
            await error_response(refused.status, refused.error, refused.headers)(scope, receive, send)
            return
        except RedisError as exc:
            log.warning("Redis unavailable: %r", exc)
            await unavailable_response(exc)(scope, receive, send)
            return
        limit, setting = self.limit_of(scope)
        message = f"The request body is over the {limit}-byte limit ({setting})."
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            error = ApiError(message=message, code="request_too_large")
            await error_response(413, error)(scope, receive, send)
            return
        scope.setdefault("state", {})["principal"] = principal  # what api_common.caller hands the route
        await self.app(scope, _counted(receive, limit, message), send)


def _counted(receive: Receive, limit: int, message: str) -> Receive:
    """`receive` that ends a body (413, OpenAI's envelope from the app's handler) once it passes `limit`:
    a chunked body declares no length."""
    seen = 0

    async def counted() -> Message:
        nonlocal seen
        received = await receive()
        if received["type"] == "http.request":
            seen += len(received.get("body", b""))
            if seen > limit:
                # FastAPI re-raises an HTTPException met while reading a body (any other error becomes a 400)
                raise HTTPException(413, detail=message)
        return received

    return counted
