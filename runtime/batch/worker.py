"""The batch worker: claims jobs from the Redis queue and runs them chunk by chunk.

- A window of `concurrency` requests stays in the engine across chunk boundaries; a chunk is
  committed (results to S3, then its checkpoint to Redis under the job's fence) when its last
  request finishes. A restarted worker runs only the chunks without a checkpoint, so after a
  kill -9 every custom_id appears exactly once across the output and error files.
- Retryable request failures are retried with backoff (tenacity); job-level failures (S3 or
  Redis down, engine gone) give the job back with a delay, and a job leased more than
  `job_max_attempts` times ends as `failed` with its errors.

Run: `python -m runtime.batch.worker` (settings from BATCH_* variables).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import logging
import math
import signal
import tempfile
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import redis.asyncio as redis
import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from tenacity import (
    AsyncRetrying,
    before_sleep_log,
    retry_if_exception,
    retry_if_result,
    stop_after_attempt,
    stop_after_delay,
)
from tenacity import wait_exponential_jitter as jitter

from runtime.batch import backup, keys, logs, metrics, redis_client, webhooks
from runtime.batch.engines import Engine, Outcome, request_id
from runtime.batch.jobs import JobStore, Lease, StaleLeaseError
from runtime.batch.models import (
    Batch,
    BatchError,
    BatchErrors,
    BatchStatus,
    BatchUsage,
    ChunkCheckpoint,
    FileObject,
    JobPlan,
    RequestCounts,
)
from runtime.batch.settings import BatchSettings
from runtime.batch.storage import (
    ObjectStore,
    chunk_input_key,
    chunk_result_key,
    file_key,
    invalid_lines_key,
    retryable_storage_error,
)
from runtime.batch.validation import RequestLine

log = logging.getLogger("runtime.batch.worker")
IDLE_POLL_S = 0.5  # also picks up delayed retries and expired leases
QUEUE_RETRY_MAX_S = 10.0  # longest wait between tries while Redis is unreachable
# Label children looked up once, not per request (the hot path).
REQUESTS_SUCCEEDED = metrics.requests_total.labels("succeeded")
REQUESTS_FAILED = metrics.requests_total.labels("failed")
PROMPT_TOKENS = metrics.tokens_total.labels("prompt")
COMPLETION_TOKENS = metrics.tokens_total.labels("completion")


class JobStopError(Exception):
    """Stop launching requests: the job was cancelled or ran past its completion window."""

    def __init__(self, status: BatchStatus):
        super().__init__(status.value)
        self.status = status


def is_infrastructure_fault(error: BaseException) -> bool:
    """Redis or S3 out of reach: the job is not at fault, so the attempt does not count against it."""
    return isinstance(error, redis_client.TRANSIENT) or retryable_storage_error(error)


def make_engine(settings: BatchSettings) -> Engine:
    if settings.engine == "offline":
        from runtime.batch.engines.offline import OfflineEngine

        return OfflineEngine(settings.model_path or settings.model, settings.model, settings.vllm_args)
    from runtime.batch.engines.http import HttpEngine

    if settings.vllm_base_url is None:
        raise ValueError("BATCH_VLLM_BASE_URL is required with BATCH_ENGINE=http")
    key = settings.vllm_api_key.get_secret_value() if settings.vllm_api_key else None
    return HttpEngine(
        str(settings.vllm_base_url),
        priority=settings.vllm_request_priority,
        concurrency=settings.concurrency,
        api_key=key,
    )


def output_row(batch_id: str, request: RequestLine, outcome: Outcome) -> dict[str, Any]:
    """One line of OpenAI's batch output (or error) file."""
    return {
        "id": request_id(batch_id, request.custom_id),
        "custom_id": request.custom_id,
        "response": {
            "status_code": outcome.status_code,
            "request_id": outcome.request_id or request_id(batch_id, request.custom_id),
            "body": outcome.body,
        },
        "error": None if outcome.ok else {**(outcome.error or {}), "line": request.line},
    }


class Worker:
    def __init__(self, settings: BatchSettings, engine: Engine, client: redis.Redis, objects: ObjectStore):
        self.settings = settings
        self.engine = engine
        self.redis = client
        self.store = JobStore(client, outage_seconds=settings.redis_outage_seconds)
        self.objects = objects
        self.worker_id = f"worker-{uuid.uuid4().hex[:8]}"
        self.webhooks = webhooks.WebhookSender(
            client, settings.webhook_secret.get_secret_value(), settings.webhook_max_attempts, settings.url_policy
        )
        self.ready = False
        self.last_beat = time.monotonic()
        self.backup_client = backup.raw_client(settings)  # DUMP payloads are binary
        self._backup: asyncio.Task | None = None
        self._stopping = asyncio.Event()
        self.window = asyncio.Semaphore(settings.concurrency)
        # Chunks started and not yet committed: enough to keep the window full, plus `commits_in_flight`
        # being written. A chunk waits here before it starts (back-pressure when S3 or Redis is slow).
        window_chunks = math.ceil(settings.concurrency / settings.chunk_size)
        self.open_chunks = asyncio.Semaphore(window_chunks + settings.commits_in_flight)

    # --- main loop -----------------------------------------------------------------------

    async def run(self) -> None:
        await self.engine.start()
        self.ready = True
        log.info("worker %s ready (engine %s)", self.worker_id, type(self.engine).__name__)
        background = asyncio.create_task(self._background())
        outages = 0
        try:
            while not self._stopping.is_set():
                try:
                    lease = await self.store.claim(self.settings.lease_seconds)
                    if lease is None:
                        await self.store.wait_for_work(IDLE_POLL_S)
                    else:
                        await self.run_leased(lease)
                    outages = 0
                except (redis.RedisError, OSError) as exc:
                    # Redis restarting or out of reach: a lease we held expires and its job goes back to
                    # the queue with its checkpoints (AOF); the worker waits and claims again.
                    outages += 1
                    delay = min(QUEUE_RETRY_MAX_S, 0.25 * 2**outages)
                    log.warning("queue unreachable (%d), retrying in %.1fs: %s", outages, delay, exc)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stopping.wait(), delay)
        finally:
            background.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await background
            if self._backup is not None:
                self._backup.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await self._backup

    def stop(self) -> None:
        self._stopping.set()

    async def _background(self) -> None:
        """Heartbeat for the fleet view and webhook delivery, independent of job work."""
        while True:
            try:
                await self.store.heartbeat(self.worker_id)
                self.last_beat = time.monotonic()
                await self.webhooks.deliver_due()
                if self._backup is None or self._backup.done():  # off the heartbeat's path: it may take a while
                    self._backup = asyncio.create_task(self._scheduled_backup())
            except (redis.RedisError, OSError) as exc:
                log.warning("background loop: %s", exc)
            await asyncio.sleep(0.5)

    async def _scheduled_backup(self) -> None:
        try:
            await backup.take_if_due(self.settings, self.objects, self.backup_client)
        except Exception as exc:  # a failed backup is logged and taken again at the next interval
            log.error("redis backup failed: %r", exc, exc_info=exc)

    async def run_leased(self, lease: Lease) -> None:
        """Run one leased job; renew the lease meanwhile; give it back on a job-level failure."""
        token_job, token_chunk = logs.job_id.set(lease.batch_id), logs.chunk.set(None)
        work = asyncio.create_task(self.process(lease))
        renew = asyncio.create_task(self._keep_lease(lease, work))
        stop = asyncio.create_task(self._stopping.wait())
        try:
            await asyncio.wait({work, stop}, return_when=asyncio.FIRST_COMPLETED)
            if not work.done():
                work.cancel()
                with contextlib.suppress(asyncio.CancelledError, StaleLeaseError):
                    await work
                await self.store.release(lease, delay_seconds=0, count_attempt=False)  # a deploy, not the job
                log.info("stopping: job given back to the queue")
                return
            if work.cancelled():  # the renewal was refused: the lease is gone (expired, or the job just finished)
                log.warning("lease lost, this worker stopped the job")
                return
            error = work.exception()
            while isinstance(error, BaseExceptionGroup):  # from the chunk TaskGroup: report the first cause
                error = error.exceptions[0]
            if error is None:
                return
            if isinstance(error, StaleLeaseError):
                log.warning("lease lost, another worker owns the job now: %s", error)
                return
            delay = min(self.settings.job_retry_base_seconds * 2 ** (lease.attempts - 1), 60.0)
            fault = is_infrastructure_fault(error)
            log.error(
                "job attempt %d failed%s, retry in %.0fs: %r",
                lease.attempts,
                " (Redis or S3 unavailable: not counted)" if fault else "",
                delay,
                error,
                exc_info=error,
            )
            with contextlib.suppress(redis.RedisError, OSError):
                await self.store.release(lease, delay_seconds=delay, count_attempt=not fault)
        finally:
            for task in (renew, stop):
                task.cancel()
            logs.job_id.reset(token_job)
            logs.chunk.reset(token_chunk)

    async def _keep_lease(self, lease: Lease, work: asyncio.Task) -> None:
        while not work.done():
            await asyncio.sleep(self.settings.lease_seconds / 3)
            try:
                if not await self.store.renew(lease, self.settings.lease_seconds):
                    log.warning("lease renewal refused (fence %d): stopping this job", lease.fence)
                    work.cancel()
                    return
            except (redis.RedisError, OSError) as exc:
                log.warning("lease renewal failed, will retry: %s", exc)

    # --- one job -------------------------------------------------------------------------

    async def process(self, lease: Lease) -> None:
        batch = await self.store.get(lease.batch_id)
        if batch is None or batch.status.terminal:  # expired from Redis, or ended by the API meanwhile
            await self.store.forget(lease)
            return
        plan = await self.store.plan(lease.batch_id)
        now = int(time.time())
        if lease.attempts > self.settings.job_max_attempts:
            error = BatchError(
                code="job_attempts_exhausted",
                message=f"the job was leased {lease.attempts - 1} times in a row without committing a chunk "
                "(each lease ended by a worker crash or an error); see the worker logs",
            )
            await self.finalize(lease, plan, BatchStatus.FAILED, errors=[error])
            return
        if batch.status == BatchStatus.CANCELLING:
            await self.finalize(lease, plan, BatchStatus.CANCELLED)
            return
        if batch.expires_at is not None and now >= batch.expires_at:
            await self.finalize(lease, plan, BatchStatus.EXPIRED)
            return
        if batch.status == BatchStatus.VALIDATING:
            batch = await self.store.update(
                lease.batch_id,
                lambda b: b.model_copy(update={"status": BatchStatus.IN_PROGRESS, "in_progress_at": now}),
                fence=lease.fence,
            )
        log.info("job started: %d requests in %d chunks (attempt %d)", plan.valid_requests, plan.chunks, lease.attempts)
        try:
            await self.run_chunks(lease, plan, batch)
        except JobStopError as stop:
            await self.finalize(lease, plan, stop.status)
            return
        missing = sorted(set(range(plan.chunks)) - set(await self.store.checkpoints(lease.batch_id)))
        if missing:  # acknowledged commits lost (Redis failed over, or its AOF lost its last second)
            raise RuntimeError(f"chunks {missing[:10]} have no checkpoint after running; the job runs them again")
        await self.finalize(lease, plan, BatchStatus.COMPLETED)

    async def run_chunks(self, lease: Lease, plan: JobPlan, batch: Batch) -> None:
        """Feed every unfinished chunk through the shared window; commit each when it is complete."""
        done = await self.store.checkpoints(lease.batch_id)
        pending = [i for i in range(plan.chunks) if i not in done]
        started = time.monotonic()
        completed_before = sum(c.completed + c.failed for c in done.values())
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
                        await self.window.acquire()
                        try:
                            task = group.create_task(self._run_request(line))
                        except BaseException:
                            self.window.release()
                            raise
                        task.add_done_callback(lambda _: self.window.release())
                        requests.append(task)
                    commit = group.create_task(self._commit(lease, plan, index, lines, requests))
                except BaseException:
                    self.open_chunks.release()
                    raise
                commit.add_done_callback(lambda _: self.open_chunks.release())
        elapsed = time.monotonic() - started
        finished = sum(c.completed + c.failed for c in (await self.store.checkpoints(lease.batch_id)).values())
        if elapsed > 0 and finished > completed_before:
            await self.store.record_throughput((finished - completed_before) / elapsed)
        if stop is not None:
            raise JobStopError(stop)

    async def _stop_reason(self, batch_id: str, batch: Batch) -> BatchStatus | None:
        current = await self.store.get(batch_id)
        if current is not None and current.status == BatchStatus.CANCELLING:
            return BatchStatus.CANCELLED
        if batch.expires_at is not None and time.time() >= batch.expires_at:
            return BatchStatus.EXPIRED
        return None

    async def _load_chunk(self, batch_id: str, index: int) -> list[RequestLine]:
        raw = await self._with_storage_retry(self.objects.aget, chunk_input_key(batch_id, index))
        return [RequestLine.from_json(line) for line in raw.splitlines() if line.strip()]

    async def _run_request(self, request: RequestLine) -> tuple[Outcome, float]:
        metrics.in_flight.inc()
        started = time.perf_counter()
        try:
            outcome = await self._with_request_retry(request)
        finally:
            metrics.in_flight.dec()
        elapsed = time.perf_counter() - started
        metrics.request_seconds.observe(elapsed)
        (REQUESTS_SUCCEEDED if outcome.ok else REQUESTS_FAILED).inc()
        PROMPT_TOKENS.inc(outcome.usage.get("prompt_tokens") or 0)
        COMPLETION_TOKENS.inc(outcome.usage.get("completion_tokens") or 0)
        return outcome, elapsed

    async def _with_request_retry(self, request: RequestLine) -> Outcome:
        answer = await self.engine.run(request)
        if not answer.retryable or self.settings.request_max_attempts == 1:
            return answer  # the hot path: no retry machinery per request
        first: Outcome | None = answer

        async def again() -> Outcome:
            nonlocal first
            if first is not None:  # tenacity's attempt 1 is the answer already in hand
                outcome, first = first, None
                return outcome
            return await self.engine.run(request)

        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.settings.request_max_attempts),
            wait=jitter(multiplier=0.5, max=30),
            retry=retry_if_result(lambda outcome: outcome.retryable),
            retry_error_callback=lambda state: state.outcome.result() if state.outcome else answer,  # the last answer
            before_sleep=lambda _state: metrics.request_retries.inc(),
        )
        return await retrying(again)

    async def _with_storage_retry(self, call: Callable, *args: Any) -> Any:
        async for attempt in AsyncRetrying(
            stop=stop_after_delay(self.settings.storage_retry_seconds),
            wait=jitter(multiplier=0.5, max=10),
            retry=retry_if_exception(retryable_storage_error),  # not a refused key or a missing object
            before_sleep=before_sleep_log(log, logging.WARNING),  # an S3 outage shows in the log
            reraise=True,
        ):
            with attempt:
                return await call(*args)
        raise AssertionError("unreachable")

    async def _commit(
        self, lease: Lease, plan: JobPlan, index: int, lines: list[RequestLine], requests: list[asyncio.Task]
    ) -> None:
        results = [await task for task in requests]
        logs.chunk.set(index)
        output: list[str] = []
        errors: list[str] = []
        for request, (outcome, _elapsed) in zip(lines, results, strict=True):
            (output if outcome.ok else errors).append(json.dumps(output_row(lease.batch_id, request, outcome)))
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
                await self._with_storage_retry(self.objects.aput, key, _jsonl(rows))
        await self.store.commit_chunk(lease, checkpoint)  # the batch's counts read these totals
        metrics.chunks_committed.inc()
        backends = Counter(outcome.backend for outcome, _ in results if outcome.backend)
        log.info(
            "chunk committed: %d ok, %d failed",
            checkpoint.completed,
            checkpoint.failed,
            extra={"backends": dict(sorted(backends.items()))} if backends else None,
        )

    async def _counts(self, batch_id: str, plan: JobPlan) -> RequestCounts:
        done = (await self.store.checkpoints(batch_id)).values()
        return RequestCounts(
            total=plan.valid_requests + plan.invalid_lines,
            completed=sum(c.completed for c in done),
            failed=plan.invalid_lines + sum(c.failed for c in done),
        )

    # --- the end of a job ----------------------------------------------------------------

    async def finalize(
        self, lease: Lease, plan: JobPlan, status: BatchStatus, errors: list[BatchError] | None = None
    ) -> None:
        """Join chunk results into the output and error files, then write the terminal state once."""
        batch_id = lease.batch_id
        now = int(time.time())
        if status == BatchStatus.COMPLETED:
            await self.store.update(
                batch_id,
                lambda b: b.model_copy(update={"status": BatchStatus.FINALIZING, "finalizing_at": now}),
                fence=lease.fence,
            )
        checkpoints = [c for _, c in sorted((await self.store.checkpoints(batch_id)).items())]
        counts = await self._counts(batch_id, plan)
        output_file = await self._join(plan, "output", [c.output_key for c in checkpoints if c.completed])
        error_keys = [c.error_key for c in checkpoints if c.failed]
        if plan.invalid_lines:
            error_keys.insert(0, invalid_lines_key(batch_id))
        error_file = await self._join(plan, "errors", error_keys)
        finished = int(time.time())
        stamp = {
            BatchStatus.COMPLETED: "completed_at",
            BatchStatus.FAILED: "failed_at",
            BatchStatus.CANCELLED: "cancelled_at",
            BatchStatus.EXPIRED: "expired_at",
        }[status]
        errors = errors or []
        current = await self.store.get(batch_id)
        if current is None:
            raise KeyError(f"batch {batch_id}: its record is gone from Redis")
        previous = list(current.errors.data) if current.errors else []
        batch = current.model_copy(
            update={
                "status": status,
                stamp: finished,
                "request_counts": counts,
                "output_file_id": output_file.id if output_file else None,
                "error_file_id": error_file.id if error_file else None,
                "errors": BatchErrors(data=previous + errors) if (previous or errors) else None,
                "usage": BatchUsage(
                    input_tokens=sum(c.prompt_tokens for c in checkpoints),
                    output_tokens=sum(c.completion_tokens for c in checkpoints),
                    total_tokens=sum(c.prompt_tokens + c.completion_tokens for c in checkpoints),
                ),
            }
        )
        requests = sum(c.completed + c.failed for c in checkpoints)
        stats = {
            "avg_response_time": (sum(c.latency_seconds for c in checkpoints) / requests) if requests else None,
            "prompt_tokens": sum(c.prompt_tokens for c in checkpoints),
            "completion_tokens": sum(c.completion_tokens for c in checkpoints),
        }
        await self.redis.set(keys.stats(batch_id), json.dumps(stats), ex=self.settings.retention_seconds)
        await self.store.finish(lease, batch, self.settings.retention_seconds)
        metrics.jobs_finished.labels(status.value).inc()
        if plan.webhook_url:
            await webhooks.enqueue(self.redis, plan.webhook_url, batch)
        with contextlib.suppress(Exception):
            await asyncio.to_thread(self.objects.delete_prefix, f"batches/{batch_id}/")
        log.info("job %s: %d ok, %d failed", status.value, counts.completed, counts.failed)

    async def _join(self, plan: JobPlan, kind: str, parts: list[str]) -> FileObject | None:
        """Concatenate chunk objects into one file object (spooled to disk, not held in memory), owned by
        the key that created the batch."""
        if not parts:
            return None
        batch_id = plan.batch_id
        file_id = f"file-{batch_id.removeprefix('batch_')}-{kind}"

        def join() -> int:
            with tempfile.SpooledTemporaryFile(max_size=8 * 1024 * 1024) as spool, ThreadPoolExecutor(8) as pool:
                ahead: deque[Future[bytes]] = deque()
                for key in parts:  # up to 8 parts fetched ahead (not all: memory stays flat), written in order
                    ahead.append(pool.submit(self.objects.get, key))
                    if len(ahead) == 8:
                        spool.write(ahead.popleft().result())
                while ahead:
                    spool.write(ahead.popleft().result())
                size = spool.tell()
                spool.seek(0)
                self.objects.upload(file_key(file_id), spool)
                return size

        size = await self._with_storage_retry(asyncio.to_thread, join)
        return await self.store.record_file(
            file_id,
            owner=plan.key_id,
            size=size,
            filename=f"{batch_id}_{kind}.jsonl",
            purpose="batch_output",
            retention_seconds=plan.output_retention_seconds or self.settings.retention_seconds,
        )


def _jsonl(rows: list[str]) -> bytes:
    return "".join(row + "\n" for row in rows).encode()


# --- process entry point -------------------------------------------------------------------


def health_app(worker: Worker) -> Starlette:
    async def health(_request) -> JSONResponse:
        beat_age = time.monotonic() - worker.last_beat
        healthy = worker.ready and beat_age < 30
        body = {"ready": worker.ready, "worker_id": worker.worker_id, "heartbeat_age_s": round(beat_age, 1)}
        return JSONResponse(body, status_code=200 if healthy else 503)

    async def metrics_endpoint(_request) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return Starlette(routes=[Route("/health", health), Route("/metrics", metrics_endpoint)])


class SignalFreeServer(uvicorn.Server):
    """uvicorn without its own SIGTERM/SIGINT handling: the worker's handlers stop it (and give its job back)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def load_factory(path: str) -> Callable[[BatchSettings], Engine]:
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


async def serve(settings: BatchSettings, engine: Engine) -> None:
    client = redis_client.connect(
        str(settings.redis_url),
        max_connections=settings.redis_max_connections,
        outage_seconds=settings.redis_outage_seconds,
    )
    objects = ObjectStore(settings)
    worker = Worker(settings, engine, client, objects)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.stop)
    server = None
    if settings.worker_metrics_port:
        config = uvicorn.Config(
            health_app(worker),
            host=settings.worker_metrics_host,
            port=settings.worker_metrics_port,
            log_level="warning",
        )
        server = SignalFreeServer(config)
        server_task = asyncio.create_task(server.serve())
    try:
        await worker.run()
    finally:
        if server is not None:
            server.should_exit = True
            await server_task
        await worker.webhooks.close()
        await worker.backup_client.aclose()
        await engine.close()
        await client.aclose()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="vllm-gb10 batch worker (settings from BATCH_* variables)")
    parser.add_argument("--engine-factory", help="module:callable taking BatchSettings (benchmarks, extensions)")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logs.configure("batch-worker", args.log_level)
    settings = BatchSettings()
    engine = load_factory(args.engine_factory)(settings) if args.engine_factory else make_engine(settings)
    asyncio.run(serve(settings, engine))


if __name__ == "__main__":
    main()
