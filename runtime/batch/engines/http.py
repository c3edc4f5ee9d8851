"""The http engine: the vLLM OpenAI servers behind the load balancer.

Batch work must not starve interactive users, so each request carries vLLM's `priority` (higher
runs later under `--scheduling-policy priority`). Each request gets its own session key so the
load balancer spreads a job over every backend instead of pinning it to one.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import quote

import httpx
from tenacity import AsyncRetrying, retry_if_exception_type, wait_exponential

from runtime import tlsfiles
from runtime.batch import logs
from runtime.batch.engines import Outcome, ServesEveryModel, Unready, request_id, usage_of
from runtime.batch.validation import RequestLine

LOG = logging.getLogger(__name__)
RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
# Answers that may be the platform's: a gateway without a backend, vLLM restarting, and vLLM's 404 "model does
# not exist" (or the load balancer's "not offered") while the model is being swapped. The worker probes.
PLATFORM_STATUS = frozenset({404, 502, 503, 504})
PROBE_TIMEOUT_S = 10.0


def session_header(custom_id: str) -> str:
    """The X-Session-ID value for a custom_id: as it is when it is printable ASCII, else its UTF-8
    percent-encoded. A header carries ASCII only (httpx raised on "café", failing the whole job), and the
    load balancer needs only the same value for the same id."""
    if custom_id.isascii() and custom_id.isprintable():
        return custom_id
    return quote(custom_id.encode("utf-8", "surrogatepass"), safe="")


def request_body(request: RequestLine, priority: int) -> dict[str, Any]:
    body = dict(request.body)
    if priority:
        body["priority"] = priority
    return body


class HttpEngine(ServesEveryModel):
    endpoints = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")

    def __init__(
        self,
        base_url: str,
        *,
        priority: int,
        concurrency: int,
        api_key: str | None = None,
        timeout_s: float = 600.0,
    ):
        self.base_url = base_url.rstrip("/").removesuffix("/v1")
        self.priority = priority
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}  # the load balancer's key for the worker
        self.client = httpx.AsyncClient(
            base_url=self.base_url,
            limits=limits,
            timeout=timeout_s,
            headers=headers,
            verify=tlsfiles.client_verify(),  # the load balancer's certificate chains to the stack's CA
        )

    async def start(self) -> None:
        """Wait until the pool answers: the worker may start before the load balancer or vLLM does
        (another host, a slow model load), and should then wait, not crash-loop."""
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type((httpx.TransportError, httpx.HTTPStatusError)),
            wait=wait_exponential(multiplier=0.5, max=10),
            before_sleep=lambda state: LOG.warning(
                "engine at %s not ready yet (%s); waiting",
                self.base_url,
                state.outcome.exception() if state.outcome else "",
            ),
            reraise=True,
        ):
            with attempt:
                response = await self.client.get("/v1/models")
                response.raise_for_status()

    async def run(self, request: RequestLine) -> Outcome:
        try:
            response = await self.client.post(
                request.url,
                json=request_body(request, self.priority),
                headers={
                    "X-Session-ID": session_header(request.custom_id),
                    "X-Request-ID": request_id(logs.job_id.get() or "", request.custom_id),
                },
            )
        except httpx.TransportError as exc:
            return Outcome(
                status_code=503,
                error={"code": "engine_unreachable", "message": f"{type(exc).__name__}: {exc}"},
                retryable=True,
                platform=True,
            )
        try:
            body = response.json()
        except ValueError:
            body = {"error": {"message": response.text[:500]}}
        echoed_id = response.headers.get("x-request-id")
        backend = response.headers.get("x-lb-backend")
        if response.is_success:
            return Outcome(
                status_code=response.status_code, body=body, request_id=echoed_id, usage=usage_of(body), backend=backend
            )
        error = body.get("error") if isinstance(body.get("error"), dict) else {"message": str(body)[:500]}
        return Outcome(
            status_code=response.status_code,
            body=body,
            error={"code": str(error.get("code") or response.status_code), "message": str(error.get("message"))},
            retryable=response.status_code in RETRYABLE_STATUS,
            request_id=echoed_id,
            backend=backend,
            platform=response.status_code in PLATFORM_STATUS,
        )

    async def probe(self, model: str) -> Unready | None:
        """Whether the pool serves `model` now. /v1/models must list it: the load balancer's lists every
        offered model with `loaded` (per model, so a job is not held up by another model's servers);
        vLLM's own lists its one model, and then its /health says whether its engine runs."""
        try:
            response = await self.client.get("/v1/models", timeout=PROBE_TIMEOUT_S)
            if response.status_code != 200:
                return Unready("engine_unavailable", f"GET /v1/models answered {response.status_code}")
            try:
                listed = response.json().get("data") or []
            except (ValueError, AttributeError):
                return Unready("engine_unavailable", "GET /v1/models answered something other than a JSON object")
            entry = next((m for m in listed if isinstance(m, dict) and m.get("id") == model), None)
            if entry is None or entry.get("loaded") is False:
                names = ", ".join(repr(m.get("id")) for m in listed if isinstance(m, dict)) or "none"
                state = "is listed but not loaded" if entry is not None else "is not served"
                return Unready("model_not_loaded", f"model {model!r} {state} (GET /v1/models lists: {names})")
            if "loaded" not in entry:  # vLLM itself
                health = await self.client.get("/health", timeout=PROBE_TIMEOUT_S)
                if health.status_code != 200:
                    return Unready("engine_unavailable", f"GET /health answered {health.status_code}")
        except httpx.TransportError as exc:
            return Unready("engine_unreachable", f"{type(exc).__name__}: {exc}")
        return None

    async def close(self) -> None:
        await self.client.aclose()
