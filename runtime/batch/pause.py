"""A job paused while the platform cannot serve it, instead of its requests failing.

A request whose failure may be the platform's (the engine out of reach, 502/503/504, a 404 while its
model is swapped: `Outcome.platform`) makes the job ask the engine (`Engine.probe`). When the engine
serves the job's model, the failure was the request's own and takes its usual course (counted retries,
then the error file). Otherwise the job pauses: every request of the job waits, nothing is sent,
the lease is renewed meanwhile, and the engine is probed with backoff until it serves the model again;
then the requests are sent again and the wait is counted as no attempt. An engine out of reach is
waited for until the job is cancelled or its completion window ends; a model the engine answers
without is waited for `BATCH_MODEL_WAIT_SECONDS`, then the job fails naming it (its requests are
never failed one by one for it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from tenacity import AsyncRetrying, retry_if_result, wait_exponential

from runtime.batch import metrics
from runtime.batch.engines import Engine, Outcome, Unready

log = logging.getLogger("runtime.batch.worker")
FIRST_POLL_S = 0.2  # the first probes come quickly: a restart behind the load balancer takes seconds


class ModelUnavailableError(Exception):
    """The engine answered without the job's model for longer than the wait allows: the job fails."""


def waiting_for(model: str, unready: Unready) -> str:
    """The job's `status_reason` while it is paused."""
    if unready.model_missing:
        return f"waiting for model {model!r}: {unready.detail}"
    return f"waiting for the engine ({unready.reason}: {unready.detail})"


class EngineGate:
    """One job's pause: its requests pass while it is open and wait while the engine is probed."""

    def __init__(
        self,
        engine: Engine,
        model: str,
        *,
        model_wait_seconds: float,
        poll_max_seconds: float,
        check_stop: Callable[[], Awaitable[None]],
        say: Callable[[str | None], Awaitable[None]],
    ):
        self.engine = engine
        self.model = model
        self.model_wait_seconds = model_wait_seconds
        self.poll_max_seconds = poll_max_seconds
        self.check_stop = check_stop  # raises to end the job (cancelled, expired) while it waits
        self.say = say  # writes the job's status_reason (None clears it)
        self.paused: asyncio.Task[bool] | None = None  # the probe, and the pause when the engine is not ready
        self.resumed = 0  # pauses ended: a request sent before one ended and failed is the outage's
        self._reason: str | None = None
        self._missing_since: float | None = None

    async def open(self) -> None:
        """Return once the job is not paused; raise what ended the pause (the job's end) if it failed."""
        while self.paused is not None:
            await asyncio.shield(self.paused)

    async def outage(self, outcome: Outcome) -> bool:
        """After a failure marked `platform`: True when the platform was at fault and serves the model
        again (send the request again, no attempt counted); False when the engine serves the model, so
        the failure is the request's own."""
        if self.paused is None:
            self.paused = asyncio.create_task(self._probe_and_wait(outcome))
            self.paused.add_done_callback(self._opened)
        return await asyncio.shield(self.paused)

    def _opened(self, task: asyncio.Task[bool]) -> None:
        if self.paused is task:
            self.paused = None

    async def close(self) -> None:
        """The job's requests are over: stop probing for it."""
        if self.paused is not None:
            self.paused.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.paused

    async def _probe_and_wait(self, trigger: Outcome) -> bool:
        unready = await self.engine.probe(self.model)
        if unready is None:
            return False
        started = time.monotonic()
        self._reason, self._missing_since = unready.reason, started if unready.model_missing else None
        metrics.jobs_paused.inc()
        metrics.job_pauses.labels(unready.reason).inc()
        error = trigger.error or {}
        log.warning(
            "job paused, not counted as an attempt: %s (a request got %d: %s)",
            waiting_for(self.model, unready),
            trigger.status_code,
            str(error.get("message") or error.get("code") or "")[:300],
            extra={"pause_reason": unready.reason, "model": self.model},
        )
        await self.say(waiting_for(self.model, unready))
        try:
            retrying = AsyncRetrying(
                wait=wait_exponential(multiplier=FIRST_POLL_S / 2, min=FIRST_POLL_S, max=self.poll_max_seconds),
                retry=retry_if_result(lambda state: state is not None),
            )
            await retrying(self._poll)
        except ModelUnavailableError as exc:
            log.error("job failed: %s", exc, extra={"pause_reason": "model_not_loaded", "model": self.model})
            raise
        finally:
            metrics.jobs_paused.dec()
        log.info(
            "job resumed after %.1fs paused (%s); its requests go again, no attempt counted",
            time.monotonic() - started,
            self._reason,
            extra={"pause_reason": self._reason, "model": self.model},
        )
        self.resumed += 1
        await self.say(None)
        return True

    async def _poll(self) -> Unready | None:
        """One probe while paused; raises when the job ends (cancelled, expired, its model waited out)."""
        await self.check_stop()
        unready = await self.engine.probe(self.model)
        if unready is None:
            return None
        now = time.monotonic()
        if unready.model_missing:
            self._missing_since = self._missing_since or now
            if now - self._missing_since >= self.model_wait_seconds:
                raise ModelUnavailableError(
                    f"model {self.model!r} was not served for {self.model_wait_seconds:g}s "
                    f"(BATCH_MODEL_WAIT_SECONDS): {unready.detail}"
                )
        if unready.reason != self._reason:
            log.warning(
                "job still paused, now %s", waiting_for(self.model, unready), extra={"pause_reason": unready.reason}
            )
            self._reason = unready.reason
            await self.say(waiting_for(self.model, unready))
        return unready
