"""Engines run one request line and say whether a failure is worth retrying.

`offline` runs vLLM in this process (vLLM's own run_batch code path, model loaded once and kept
warm across jobs); `http` sends requests to the vLLM servers behind the load balancer.
"""

from __future__ import annotations

import hashlib
from typing import Any, Protocol

import msgspec

from runtime.batch.validation import RequestLine


class Outcome(msgspec.Struct, frozen=True):
    """What the engine said about one request, before the worker writes it out (a msgspec Struct: one
    per request, built in half a frozen dataclass's time)."""

    status_code: int
    body: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    retryable: bool = False
    request_id: str | None = None
    usage: dict[str, Any] = msgspec.field(default_factory=dict)
    backend: str | None = None  # the vLLM server the load balancer chose (its X-LB-Backend header)
    # The failure may be the platform's, not the request's: the engine out of reach, 502/503/504, or a
    # 404 that may mean the model is not loaded. The worker asks the engine (`probe`) before it decides.
    platform: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None and 200 <= self.status_code < 300


class Unready(msgspec.Struct, frozen=True):
    """Why the engine cannot serve a job's model now (a job waits for it, it does not fail)."""

    reason: str  # engine_unreachable, engine_unavailable (it answers 5xx) or model_not_loaded
    detail: str

    @property
    def model_missing(self) -> bool:
        """The engine answers but does not serve the model: only this wait is bounded (BATCH_MODEL_WAIT_SECONDS)."""
        return self.reason == "model_not_loaded"


def request_id(batch_id: str, custom_id: str) -> str:
    """Deterministic per request, so a chunk run twice writes identical ids; sent to vLLM as
    X-Request-ID, so one request can be followed from the worker's log to the server's."""
    # surrogatepass: a lone surrogate in a custom_id of a job queued before intake refused them
    key = f"{batch_id}\0{custom_id}".encode("utf-8", "surrogatepass")
    return "batch_req_" + hashlib.sha1(key).hexdigest()[:24]


class Engine(Protocol):
    @property
    def endpoints(self) -> tuple[str, ...]: ...

    @property
    def loaded_model(self) -> str | None:
        """The model this engine runs now; None: any offered model (the load balancer routes by model)."""
        ...

    async def switch(self, model: str) -> str:
        """Load `model` instead; returns how ("sleep", "restart"; "none" when nothing changed)."""
        ...

    async def start(self) -> None: ...

    async def run(self, request: RequestLine) -> Outcome: ...

    async def probe(self, model: str) -> Unready | None:
        """Whether the engine can serve `model` now (None: it can); asked after an Outcome marked `platform`."""
        ...

    async def close(self) -> None: ...


class ServesEveryModel:
    """For engines that hold no model themselves (the http engine: the load balancer routes by model)."""

    loaded_model: str | None = None

    async def switch(self, model: str) -> str:
        return "none"

    async def probe(self, model: str) -> Unready | None:
        """Ready: an engine without its own server has no outage to wait out."""
        return None


def serves(engine: Engine, model: str) -> bool:
    """Whether a job for `model` runs on this engine without a switch."""
    return engine.loaded_model is None or engine.loaded_model == model


def usage_of(body: dict[str, Any] | None) -> dict[str, Any]:
    usage = (body or {}).get("usage") or {}
    return usage if isinstance(usage, dict) else {}
