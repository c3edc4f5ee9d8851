"""ASGI middleware for vLLM's OpenAI server: no client request runs ahead of interactive ones.

vLLM runs `--scheduling-policy priority` (lower runs first): interactive requests at 0, the batch
worker's at a higher value. A client that sends a negative `priority` would jump every queue (issue 32),
and the load balancer cannot rewrite JSON bodies. vLLM loads this with
`--middleware runtime.vllm_guard.PriorityFloor`: it reads the whole body (vLLM reads it whole anyway),
parses it as vLLM does (`json.loads`: a repeated key counts once, the last) and raises a `priority` below
FLOOR to FLOOR before vLLM sees it. Any other body passes unchanged, byte for byte.
"""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

__all__ = ["FLOOR", "PriorityFloor", "floor_priority"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

FLOOR = 0  # interactive requests' priority: nothing a client sends runs before them


def _below_floor(value: object) -> bool:
    """Whether vLLM would read `value` as a priority below FLOOR (pydantic's lax int: 3, 3.0, "3")."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int | float):
        return value < FLOOR
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return False
        return not math.isnan(number) and number < FLOOR
    return False


def floor_priority(body: bytes) -> bytes:
    """The body vLLM should see: `body` itself, or its JSON object re-encoded with `priority` at FLOOR."""
    if b"priority" not in body and b"\\u" not in body:  # no such key, not even spelled with escapes
        return body
    try:
        data = json.loads(body)
    except ValueError:  # also UnicodeDecodeError: vLLM refuses such a body itself
        return body
    if not isinstance(data, dict) or not _below_floor(data.get("priority")):
        return body
    data["priority"] = FLOOR
    return json.dumps(data, ensure_ascii=False).encode()


class PriorityFloor:
    """`--middleware runtime.vllm_guard.PriorityFloor`: POST bodies with `priority` raised to FLOOR."""

    def __init__(self, app: App) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left before its body was in
                await self.app(scope, _replay(message, receive), send)
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        original = b"".join(chunks)
        body = floor_priority(original)
        if body is not original:
            headers = [(k, v) for k, v in scope["headers"] if k.lower() != b"content-length"]
            scope = {**scope, "headers": [*headers, (b"content-length", str(len(body)).encode())]}
        await self.app(scope, _replay({"type": "http.request", "body": body, "more_body": False}, receive), send)


def _replay(first: Message, receive: Receive) -> Receive:
    """A receive that gives `first` once, then the client's own messages (vLLM watches for disconnects)."""
    pending = [first]

    async def replayed() -> Message:
        return pending.pop() if pending else await receive()

    return replayed
