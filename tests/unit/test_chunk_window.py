"""The worker's window of requests in flight (runtime.batch.chunk_pipeline.Window)."""

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


def test_a_full_window_waits_for_a_slot_given_back() -> None:
    async def test() -> None:
        window = Window(2)
        await window.take()
        await window.take()
        third = asyncio.create_task(window.take())
        await settle()
        assert not third.done() and window.used == 2
        window.give()
        await asyncio.wait_for(third, 5)
        assert window.used == 2

    run(test())


def test_a_cancelled_wait_takes_no_slot_and_the_next_take_still_wakes() -> None:
    async def test() -> None:
        window = Window(1)
        await window.take()
        waiting = asyncio.create_task(window.take())
        await settle()
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
        window = Window(1)
        await window.take()
        first = asyncio.create_task(window.take())
        await settle()
        with pytest.raises(RuntimeError, match="second loop"):
            await window.take()
        window.give()
        await asyncio.wait_for(first, 5)

    run(test())
