"""The worker's chunk pipeline: its window of requests in flight and its per-request counters."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import pytest

from runtime.batch.chunk_pipeline import Window


def run(coroutine: Coroutine[Any, Any, None]) -> None:
    """A private loop: asyncio.run would leave no current loop behind for the Pulumi mock tests."""
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(coroutine)
    finally:
        loop.close()


async def settle() -> None:
    for _ in range(5):  # a few turns of the loop: a woken waiter runs within them
        await asyncio.sleep(0)


async def full_with_a_waiter(size: int) -> tuple[Window, asyncio.Task[None]]:
    """A window with every slot taken, and a take() waiting for the next one."""
    window = Window(size)
    for _ in range(size):
        await window.take()
    waiter = asyncio.create_task(window.take())
    await settle()
    return window, waiter


def test_a_full_window_waits_for_a_slot_given_back() -> None:
    async def test() -> None:
        window, third = await full_with_a_waiter(2)
        assert not third.done() and window.used == 2
        window.give()
        await asyncio.wait_for(third, 5)
        assert window.used == 2

    run(test())


def test_a_cancelled_wait_takes_no_slot_and_the_next_take_still_wakes() -> None:
    async def test() -> None:
        window, waiting = await full_with_a_waiter(1)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert window.used == 1
        again = asyncio.create_task(window.take())
        await settle()
        window.give()
        await asyncio.wait_for(again, 5)
        assert window.used == 1

    run(test())


def test_a_second_launching_loop_is_refused_not_left_asleep() -> None:
    async def test() -> None:
        window, first = await full_with_a_waiter(1)
        with pytest.raises(RuntimeError, match="second loop"):
            await window.take()
        window.give()
        await asyncio.wait_for(first, 5)

    run(test())


def test_requests_and_tokens_are_counted_as_each_request_finishes_not_per_chunk() -> None:
    """A chunk of slow requests commits minutes apart; counted only then, the 5-minute error-rate alert
    would see no rate at all between commits."""
    from prometheus_client import generate_latest

    from runtime.batch import metrics
    from runtime.batch.chunk_pipeline import ChunkPipeline
    from runtime.batch.engines import Outcome
    from runtime.batch.pause import EngineGate
    from runtime.batch.validation import RequestLine

    class Answers:
        def __init__(self) -> None:
            self.outcomes = [
                Outcome(status_code=200, body={}, usage={"prompt_tokens": 5, "completion_tokens": 2}),
                Outcome(status_code=400, error={"code": "bad"}),
            ]

        async def run(self, request: RequestLine) -> Outcome:
            return self.outcomes.pop(0)

    pipeline = ChunkPipeline.__new__(ChunkPipeline)  # only _run_request: no store, objects or settings needed
    pipeline.engine = Answers()  # type: ignore[assignment]
    pipeline.settings = type("S", (), {"request_max_attempts": 1})()
    before = vars(metrics.tally).copy()
    request = RequestLine(line=1, custom_id="a", url="/v1/chat/completions", body={})

    async def nothing(*_args: object) -> None:
        pass

    gate = EngineGate(
        pipeline.engine, "m", model_wait_seconds=1, poll_max_seconds=1, check_stop=nothing, say=nothing
    )  # never closed: no answer here is the platform's

    async def test() -> None:
        await pipeline._run_request(request, gate)
        await pipeline._run_request(request, gate)

    run(test())
    moved = {k: v - before[k] for k, v in vars(metrics.tally).items()}
    assert moved == {"succeeded": 1, "failed": 1, "prompt_tokens": 5, "completion_tokens": 2}
    text = generate_latest(metrics.registry).decode()
    assert f'batch_requests_total{{outcome="failed"}} {float(metrics.tally.failed)}' in text


def test_a_request_that_failed_in_an_outage_already_waited_out_goes_again_uncounted() -> None:
    """A request sent before a pause whose failure (the outage's) reaches the worker only after the
    pause ended: probing now finds the engine ready, but the failure was still the platform's, so it is
    sent again without counting an attempt (seen as a flaky retry in the engine outage tests)."""
    from runtime.batch import metrics
    from runtime.batch.chunk_pipeline import ChunkPipeline
    from runtime.batch.engines import Outcome, Unready
    from runtime.batch.pause import EngineGate
    from runtime.batch.validation import RequestLine

    down = Outcome(status_code=503, error={"code": "503"}, retryable=True, platform=True)

    class Restarting:
        def __init__(self) -> None:
            self.back = False
            self.late_answer = asyncio.Event()  # set once the pause has ended
            self.calls: list[str] = []
            self.probes = 0

        async def run(self, request: RequestLine) -> Outcome:
            self.calls.append(request.custom_id)
            if self.calls.count(request.custom_id) > 1:
                return Outcome(status_code=200, body={})
            if request.custom_id == "late":
                await self.late_answer.wait()
            return down

        async def probe(self, model: str) -> Unready | None:
            self.probes += 1
            return None if self.back else Unready("engine_unavailable", "GET /v1/models answered 503")

    engine = Restarting()
    pipeline = ChunkPipeline.__new__(ChunkPipeline)
    pipeline.engine = engine  # type: ignore[assignment]
    pipeline.settings = type("S", (), {"request_max_attempts": 3})()

    async def nothing(*_args: object) -> None:
        pass

    def line(custom_id: str) -> RequestLine:
        return RequestLine(line=1, custom_id=custom_id, url="/v1/chat/completions", body={})

    async def test() -> None:
        gate = EngineGate(engine, "m", model_wait_seconds=60, poll_max_seconds=0.05, check_stop=nothing, say=nothing)
        late = asyncio.create_task(pipeline._with_request_retry(line("late"), gate))
        await settle()  # "late" is out at the engine
        first = asyncio.create_task(pipeline._with_request_retry(line("first"), gate))
        while engine.probes < 2:  # paused, and probing while paused
            await asyncio.sleep(0.01)
        engine.back = True
        assert (await first).ok and gate.resumed == 1
        engine.late_answer.set()  # its 503 arrives now, after the pause
        assert (await late).ok

    retries = metrics.request_retries._value.get()
    run(test())
    assert metrics.request_retries._value.get() == retries, "the outage's failure was counted as an attempt"
    assert engine.calls.count("late") == 2
