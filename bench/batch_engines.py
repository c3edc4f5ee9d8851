"""A benchmark-only engine that answers at once: it measures what API + queue + worker + S3 cost."""

from __future__ import annotations

from typing import Any

from runtime.batch.engines import Outcome, ServesEveryModel
from runtime.batch.settings import BatchSettings
from runtime.batch.validation import RequestLine

BODY: dict[str, Any] = {
    "object": "chat.completion",
    "model": "instant",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 8, "completion_tokens": 1, "total_tokens": 9},
}


class InstantEngine(ServesEveryModel):
    endpoints = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")

    async def start(self) -> None:
        pass

    async def run(self, request: RequestLine) -> Outcome:
        return Outcome(status_code=200, body={**BODY, "id": f"cmpl-{request.custom_id}"}, usage=BODY["usage"])

    async def close(self) -> None:
        pass


def instant(_settings: BatchSettings) -> InstantEngine:
    return InstantEngine()
