"""runtime.vllm_guard in front of a FastAPI app that parses bodies with vLLM's own ChatCompletionRequest
(the model vLLM's server validates a chat request with), over real ASGI calls: whatever a client sends
as `priority`, vLLM reads none below 0 (issue 32)."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from fastapi import FastAPI, Request

from runtime.vllm_guard import FLOOR, PriorityFloor, floor_priority


def _app() -> PriorityFloor:
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest

    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(raw: Request) -> dict[str, object]:
        parsed = ChatCompletionRequest.model_validate(await raw.json())  # as vLLM's handler receives it
        return {"priority": parsed.priority, "length": raw.headers["content-length"], "got": len(await raw.body())}

    return PriorityFloor(app)


def _send(body: bytes) -> dict[str, object]:
    async def call() -> dict[str, object]:
        transport = httpx.ASGITransport(app=_app())
        async with httpx.AsyncClient(transport=transport, base_url="http://vllm") as client:
            headers = {"Content-Type": "application/json"}
            reply = await client.post("/v1/chat/completions", content=body, headers=headers)
            assert reply.status_code == 200, reply.text
            return reply.json()  # type: ignore[no-any-return]

    return asyncio.run(call())


def _chat(priority_json: str) -> bytes:
    head = '{"model": "m", "messages": [{"role": "user", "content": "hi"}], "priority": '
    return (head + priority_json + "}").encode()


@pytest.mark.parametrize(
    "sent",
    [
        "-1",
        "-1000",
        '"-5"',  # pydantic's lax int takes numeric strings
        "-1.0",
        '" -3"',
        '5, "priority": -7',  # a repeated key: vLLM's json.loads keeps the last
    ],
)
def test_a_negative_priority_reaches_vllm_as_the_floor(sent: str) -> None:
    seen = _send(_chat(sent))
    assert seen["priority"] == FLOOR
    assert int(str(seen["length"])) == seen["got"]  # Content-Length matches the rewritten body


def test_an_escaped_key_is_read_as_vllm_reads_it() -> None:
    body = b'{"model": "m", "messages": [], "\\u0070riority": -9}'
    assert json.loads(body)["priority"] == -9
    assert _send(body)["priority"] == FLOOR


@pytest.mark.parametrize(("sent", "expected"), [("0", 0), ("10", 10), ('"3"', 3)])
def test_zero_and_positive_priorities_pass_unchanged(sent: str, expected: int) -> None:
    body = _chat(sent)
    assert floor_priority(body) is body  # byte for byte
    assert _send(body)["priority"] == expected


def test_other_bodies_pass_byte_for_byte() -> None:
    for body in (b"not json", b"[1, 2]", b'{"model": "m"}', b'{"priority": true}', b"\xff\xfe", b""):
        assert floor_priority(body) is body


def test_vllms_servers_load_it_as_vllm_loads_a_middleware() -> None:
    """server_flags names it, and the name resolves the way vLLM's --middleware loader resolves one (a class
    goes to app.add_middleware)."""
    import importlib
    import inspect

    from infra.components.vllm import PRIORITY_MIDDLEWARE, server_flags
    from infra.config import VllmSettings

    flags = server_flags(VllmSettings(), "10.0.0.1", 8000, {})
    assert flags[flags.index("--middleware") + 1] == PRIORITY_MIDDLEWARE
    assert "--scheduling-policy" in flags and flags[flags.index("--scheduling-policy") + 1] == "priority"
    module, name = PRIORITY_MIDDLEWARE.rsplit(".", 1)
    loaded = getattr(importlib.import_module(module), name)
    assert inspect.isclass(loaded) and loaded is PriorityFloor
