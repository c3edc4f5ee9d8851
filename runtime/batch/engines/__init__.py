"""Engines run one request line and say whether a failure is worth retrying.

`offline` runs vLLM in this process (vLLM's own run_batch code path, model loaded once and kept
warm across jobs); `http` sends requests to the vLLM servers behind the load balancer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from runtime.batch.validation import RequestLine


@dataclass(frozen=True)
class Outcome:
    """What the engine said about one request, before the worker writes it out."""

    status_code: int
    body: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    retryable: bool = False
    request_id: str | None = None
    usage: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None and 200 <= self.status_code < 300


class Engine(Protocol):
    endpoints: tuple[str, ...]

    async def start(self) -> None: ...

    async def run(self, request: RequestLine) -> Outcome: ...

    async def close(self) -> None: ...


def usage_of(body: dict[str, Any] | None) -> dict[str, Any]:
    usage = (body or {}).get("usage") or {}
    return usage if isinstance(usage, dict) else {}
