"""One job's requests through the engine, chunk by chunk: the worker's hot path.

A window of `concurrency` requests stays in the engine across chunk boundaries; a chunk is committed
(results to S3, then its checkpoint to Redis under the job's fence) when its last request finishes.
A restarted worker runs only the chunks without a checkpoint, so after a kill -9 every custom_id
appears exactly once across the output and error files. A failure that may be the platform's
pauses the job (pause.py: nothing counted, the requests wait and go again once the engine serves the
model); retryable failures of the request's own are retried with backoff (tenacity); the first answer
is taken without any retry machinery.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import Counter
from typing import Any

import redis.asyncio as redis
from tenacity import AsyncRetrying, retry_if_result, stop_after_attempt
from tenacity import wait_exponential_jitter as jitter

from runtime.batch import json_lines, logs, metrics
from runtime.batch.engines import Engine, Outcome, request_id
from runtime.batch.jobs import JobStore, Lease
from runtime.batch.models import Batch, BatchStatus, ChunkCheckpoint, JobPlan
from runtime.batch.pause import EngineGate
from runtime.batch.settings import BatchSettings
from runtime.batch.storage import ObjectStore, chunk_input_key, chunk_result_key, with_storage_retry
from runtime.batch.validation import RequestLine

log = logging.getLogger("runtime.batch.worker")


class JobStopError(Exception):
    """Stop launching requests: the job was cancelled or ran past its completion window."""

    def __init__(self, status: BatchStatus):
        super().__init__(status.value)
        self.status = status


def output_row(batch_id: str, request: RequestLine, outcome: Outcome) -> dict[str, Any]:
    """One line of OpenAI's batch output (or error) file."""
    ours = request_id(batch_id, request.custom_id)
    return {
        "id": ours,
        "custom_id": request.custom_id,
        "response": {
            "status_code": outcome.status_code,
            "request_id": outcome.request_id or ours,
            "body": outcome.body,
        },
        "error": None if outcome.ok else {**(outcome.error or {}), "line": request.line},
    }


def jsonl(rows: list[bytes]) -> bytes:
    return b"".join(row + b"\n" for row in rows)


class Window:
    """At most `size` requests in flight, taken by one launching loop (the pipeline runs one job at a time).
    asyncio.Semaphore would do, but each acquire scans its waiters: ~4% of the worker's CPU per request."""

    def __init__(self, size: int):
        self.size = size
        self.used = 0
        self._freed: asyncio.Future[None] | None = None

    async def take(self) -> None:
        while self.used >= self.size:
            if self._freed is not None:
                raise RuntimeError("a second loop is launching requests into the window")
            self._freed = asyncio.get_running_loop().create_future()
            try:
                await self._freed
            finally:
                self._freed = None
        self.used += 1

    def give(self, _task: object = None) -> None:
        """A slot back; a task's done callback."""
        self.used -= 1
        if self._freed is not None and not self._freed.done():
            self._freed.set_result(None)


class ChunkPipeline:
    """The window of requests in the engine and the chunks open for commit, shared by every job the
    worker runs (a job's last chunks overlap the next job's first)."""

    def __init__(self, settings: BatchSettings, engine: Engine, store: JobStore, objects: ObjectStore):
        self.settings = settings
        self.engine = engine
        self.store = store
        self.objects = objects
        self.window = Window(settings.concurrency)
        metrics.in_flight.set_function(lambda: self.window.used)  # read at scrape time, not set per request
        # Chunks started and not yet committed: enough to keep the window full, plus `commits_in_flight`
        # being written. A chunk waits here before it starts (back-pressure when S3 or Redis is slow).
        window_chunks = math.ceil(settings.concurrency / settings.chunk_size)
        self.open_chunks = asyncio.Semaphore(window_chunks + settings.commits_in_flight)

    async def run_chunks(self, lease: Lease, plan: JobPlan, batch: Batch) -> None:
        """Feed every unfinished chunk through the shared window; commit each when it is complete."""
        done = await self.store.checkpoints(lease.batch_id)
        pending = [i for i in range(plan.chunks) if i not in done]
        started = time.monotonic()
        completed_before = sum(c.completed + c.failed for c in done.values())
        gate = self._gate(lease, batch, plan.model)
        try:
            stop = await self._run_pending(lease, plan, batch, pending, gate)
        finally:
            await gate.close()
        elapsed = time.monotonic() - started
        finished = sum(c.completed + c.failed for c in (await self.store.checkpoints(lease.batch_id)).values())
        if elapsed > 0 and finished > completed_before:
            await self.store.record_throughput((finished - completed_before) / elapsed)
        if stop is not None:
            raise JobStopError(stop)

    def _gate(self, lease: Lease, batch: Batch, model: str) -> EngineGate:
        """The job's pause while the engine cannot serve its model."""

        async def check_stop() -> None:
            stop = await self._stop_reason(lease.batch_id, batch)
            if stop is not None:
                raise JobStopError(stop)

        async def say(reason: str | None) -> None:
            with contextlib.suppress(redis.RedisError, OSError):  # a status line, not worth failing the job for
                await self.store.update(
                    lease.batch_id, lambda b: b.model_copy(update={"status_reason": reason}), fence=lease.fence
                )

        return EngineGate(
            self.engine,
            model,
            model_wait_seconds=self.settings.model_wait_seconds,
            poll_max_seconds=self.settings.engine_poll_max_seconds,
            check_stop=check_stop,
            say=say,
        )

    async def _run_pending(
        self, lease: Lease, plan: JobPlan, batch: Batch, pending: list[int], gate: EngineGate
    ) -> BatchStatus | None:
        """Run the pending chunks; the status to end the job with when it was stopped between chunks."""
        stop: BatchStatus | None = None
        async with asyncio.TaskGroup() as group:
            next_input = group.create_task(self._load_chunk(lease.batch_id, pending[0])) if pending else None
            for position, index in enumerate(pending):
                assert next_input is not None  # set before the loop and at the end of each turn
                stop = await self._stop_reason(lease.batch_id, batch)
                if stop is not None:  # let the chunks already started finish and commit
                    next_input.cancel()
                    break
                lines = await next_input
                if position + 1 < len(pending):  # prefetch while this chunk runs
                    next_input = group.create_task(self._load_chunk(lease.batch_id, pending[position + 1]))
                logs.chunk.set(index)
                await self.open_chunks.acquire()
                try:  # the permits outlive the job: one lost to a cancellation here would be lost for good
                    requests = []
                    for line in lines:
                        await self.window.take()
                        try:
                            task = group.create_task(self._run_request(line, gate))
                        except BaseException:
                            self.window.give()
                            raise
                        task.add_done_callback(self.window.give)
                        requests.append(task)
                    commit = group.create_task(self._commit(lease, plan, index, lines, requests))
                except BaseException:
                    self.open_chunks.release()
                    raise
                commit.add_done_callback(lambda _: self.open_chunks.release())
        return stop

    async def _stop_reason(self, batch_id: str, batch: Batch) -> BatchStatus | None:
        current = await self.store.get(batch_id)
        if current is not None and current.status == BatchStatus.CANCELLING:
            return BatchStatus.CANCELLED
        expires_at = (current or batch).expires_at  # the record's window, as it is now
        if expires_at is not None and time.time() >= expires_at:
            return BatchStatus.EXPIRED
        return None

    async def _load_chunk(self, batch_id: str, index: int) -> list[RequestLine]:
        raw = await with_storage_retry(
            self.settings.storage_retry_seconds, self.objects.aget, chunk_input_key(batch_id, index)
        )
        return RequestLine.from_chunk(raw)

    async def _run_request(self, request: RequestLine, gate: EngineGate) -> tuple[Outcome, float]:
        started = time.perf_counter()
        outcome = await self._with_request_retry(request, gate)
        elapsed = time.perf_counter() - started
        metrics.request_seconds.observe(elapsed)
        tally = metrics.tally
        if outcome.ok:
            tally.succeeded += 1
        else:
            tally.failed += 1
        tally.prompt_tokens += outcome.usage.get("prompt_tokens") or 0
        tally.completion_tokens += outcome.usage.get("completion_tokens") or 0
        return outcome, elapsed

    async def _send(self, request: RequestLine, gate: EngineGate) -> Outcome:
        """One answer for the request that is not the platform's fault: while the job is paused it waits,
        and a failure that was the platform's is sent again (no attempt counted)."""
        while True:
            if gate.paused is not None:
                await gate.open()
            resumed = gate.resumed
            answer = await self.engine.run(request)
            if not answer.platform:
                return answer
            if gate.resumed != resumed:  # a pause ended while it was out: its failure is that outage's
                continue
            if not await gate.outage(answer):
                return answer

    async def _with_request_retry(self, request: RequestLine, gate: EngineGate) -> Outcome:
        answer = await self._send(request, gate)
        if not answer.retryable or self.settings.request_max_attempts == 1:
            return answer  # the hot path: no retry machinery per request
        first: Outcome | None = answer

        async def again() -> Outcome:
            nonlocal first
            if first is not None:  # tenacity's attempt 1 is the answer already in hand
                outcome, first = first, None
                return outcome
            return await self._send(request, gate)

        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.settings.request_max_attempts),
            wait=jitter(multiplier=0.5, max=30),
            retry=retry_if_result(lambda outcome: outcome.retryable),
            retry_error_callback=lambda state: state.outcome.result() if state.outcome else answer,  # the last answer
            before_sleep=lambda _state: metrics.request_retries.inc(),
        )
        return await retrying(again)

    async def _commit(
        self,
        lease: Lease,
        plan: JobPlan,
        index: int,
        lines: list[RequestLine],
        requests: list[asyncio.Task[tuple[Outcome, float]]],
    ) -> None:
        results = [await task for task in requests]
        logs.chunk.set(index)
        output: list[bytes] = []
        errors: list[bytes] = []
        for request, (outcome, _elapsed) in zip(lines, results, strict=True):
            (output if outcome.ok else errors).append(json_lines.dumps(output_row(lease.batch_id, request, outcome)))
        checkpoint = ChunkCheckpoint(
            index=index,
            output_key=chunk_result_key(lease.batch_id, "out", index, lease.fence),
            error_key=chunk_result_key(lease.batch_id, "err", index, lease.fence),
            completed=len(output),
            failed=len(errors),
            prompt_tokens=sum(o.usage.get("prompt_tokens") or 0 for o, _ in results),
            completion_tokens=sum(o.usage.get("completion_tokens") or 0 for o, _ in results),
            latency_seconds=sum(elapsed for _, elapsed in results),
        )
        for key, rows in ((checkpoint.output_key, output), (checkpoint.error_key, errors)):
            if rows:  # an empty part is never read: the join takes the parts with rows
                await with_storage_retry(self.settings.storage_retry_seconds, self.objects.aput, key, jsonl(rows))
        await self.store.commit_chunk(lease, checkpoint)  # the batch's counts read these totals
        metrics.chunks_committed.inc()
        backends = Counter(outcome.backend for outcome, _ in results if outcome.backend)
        log.info(
            "chunk committed: %d ok, %d failed",
            checkpoint.completed,
            checkpoint.failed,
            extra={"backends": dict(sorted(backends.items()))} if backends else None,
        )
