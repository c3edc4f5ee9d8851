"""The worker's job loop: claim a job from the Redis queue, keep its lease while it runs, give it
back on a failure (with a delay; a job leased more than `job_max_attempts` times in a row without
progress ends as `failed`), and the background heartbeat, scheduled backups, the expiry sweep
(runtime.batch.expiry) and webhook delivery (each its own task, so a slow webhook receiver never delays
the heartbeat)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable

import redis.asyncio as redis

from runtime.batch import backup, logs, metrics, redis_client, webhooks
from runtime.batch.chunk_pipeline import ChunkPipeline, JobStopError
from runtime.batch.engines import Engine, serves
from runtime.batch.expiry import ExpirySweeper
from runtime.batch.finalize import JobFinisher
from runtime.batch.jobs import JobStore, Lease, StaleLeaseError
from runtime.batch.models import Batch, BatchError, BatchStatus
from runtime.batch.pause import ModelUnavailableError
from runtime.batch.settings import BatchSettings
from runtime.batch.storage import ObjectStore, retryable_storage_error

log = logging.getLogger("runtime.batch.worker")
IDLE_POLL_S = 0.5  # also picks up delayed retries and expired leases
QUEUE_RETRY_MAX_S = 10.0  # longest wait between tries while Redis is unreachable


class ModelSwitchError(RuntimeError):
    """The engine could not load a job's model (the job is not at fault: it waits and is tried again)."""


def is_infrastructure_fault(error: BaseException) -> bool:
    """Redis or S3 out of reach, or the job's model failed to load: the job is not at fault, so the
    attempt does not count against it."""
    return isinstance(error, (*redis_client.TRANSIENT, ModelSwitchError)) or retryable_storage_error(error)


def first_cause(error: BaseException | None) -> BaseException | None:
    """The first error inside nested exception groups (the chunk TaskGroup's)."""
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error


class Worker:
    def __init__(self, settings: BatchSettings, engine: Engine, client: redis.Redis, objects: ObjectStore):
        self.settings = settings
        self.engine = engine
        self.redis = client
        self.store = JobStore(client, outage_seconds=settings.redis_outage_seconds)
        self.objects = objects
        self.worker_id = f"worker-{uuid.uuid4().hex[:8]}"
        self.webhooks = webhooks.WebhookSender(
            client,
            settings.webhook_secret.get_secret_value(),
            settings.webhook_max_attempts,
            settings.url_policy,
            deadline_s=settings.webhook_deadline_seconds,
            concurrency=settings.webhook_concurrency,
            per_receiver=settings.webhook_per_receiver,
        )
        self.ready = False
        self.last_beat = time.monotonic()
        self.backup_client = backup.raw_client(settings)  # DUMP payloads are binary
        self.backup_objects = ObjectStore(settings, backups=True)  # the backups' own S3 user, where set
        self._backup: asyncio.Task[None] | None = None
        self.expiry = ExpirySweeper(settings, objects, client)
        self._expiry: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._memory_pause = False  # the last answer of the host's memory guard (logged when it changes)
        self.pipeline = ChunkPipeline(settings, engine, self.store, objects)
        self.finisher = JobFinisher(settings, self.store, objects, client)

    # --- main loop -----------------------------------------------------------------------

    async def run(self) -> None:
        await self.engine.start()
        if self.engine.loaded_model is not None:
            metrics.model_loaded.labels(self.engine.loaded_model).set(1)
        self.ready = True
        log.info("worker %s ready (engine %s)", self.worker_id, type(self.engine).__name__)
        background = asyncio.create_task(self._background())
        deliveries = asyncio.create_task(self.webhooks.run(self._stopping))  # its own task: never the heartbeat's
        outages = 0
        try:
            while not self._stopping.is_set():
                try:
                    if await self._memory_paused():
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(self._stopping.wait(), IDLE_POLL_S)
                        continue
                    lease = await self.store.claim(
                        self.settings.lease_seconds,
                        loaded_model=self.engine.loaded_model,
                        switch_after_seconds=self.settings.model_switch_after_seconds,
                    )
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
            for task in (background, deliveries):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            for scheduled in (self._backup, self._expiry):
                if scheduled is not None:
                    scheduled.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await scheduled

    def stop(self) -> None:
        self._stopping.set()

    async def _memory_paused(self) -> bool:
        """Whether the host's memory guard says to claim nothing now; logs and shows each change. The job
        this worker already runs goes on (its lease kept): only new work waits."""
        host = self.settings.memguard_host
        paused = host is not None and await self.store.memory_paused(host)
        if paused != self._memory_pause:
            self._memory_pause = paused
            metrics.memory_paused.set(1 if paused else 0)
            if paused:
                log.warning("memory guard of %s paused new work: no job is claimed", host, extra={"memguard": "pause"})
            else:
                log.warning("memory guard of %s resumed: claiming jobs again", host, extra={"memguard": "resume"})
        return paused

    async def _background(self) -> None:
        """Heartbeat for the fleet view, independent of job work and of webhook delivery (its own task)."""
        while True:
            try:
                await self.store.heartbeat(self.worker_id, self.engine.loaded_model)
                self.last_beat = time.monotonic()
                if self._backup is None or self._backup.done():  # off the heartbeat's path: it may take a while
                    self._backup = asyncio.create_task(self._scheduled_backup())
                if self._expiry is None or self._expiry.done():  # its own task too: a sweep lists the bucket
                    self._expiry = asyncio.create_task(self._scheduled_expiry())
            except (redis.RedisError, OSError) as exc:
                log.warning("background loop: %s", exc)
            await asyncio.sleep(0.5)

    async def _scheduled_backup(self) -> None:
        try:
            await backup.take_if_due(self.settings, self.backup_objects, self.backup_client)
        except Exception as exc:  # a failed backup is logged and taken again at the next interval
            log.error("redis backup failed: %r", exc, exc_info=exc)

    async def _scheduled_expiry(self) -> None:
        try:
            report = await self.expiry.sweep_if_due()
        except Exception as exc:  # counted (batch_expiry_errors); the next interval sweeps again from where it was
            log.error("expiry sweep failed: %r", exc, exc_info=exc)
            return
        if report is not None and (any(report.deleted.values()) or report.refused):
            log.info(
                "expiry sweep: deleted %s, %d refused by S3, %d objects listed%s",
                report.deleted,
                report.refused,
                report.listed,
                " (listing complete)" if report.listing_complete else "",
            )

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
            error = first_cause(work.exception())
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

    async def _keep_lease(self, lease: Lease, work: asyncio.Task[None]) -> None:
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

    async def switch_model(self, lease: Lease, model: str) -> None:
        """Load the job's model in place of the engine's (the lease is renewed meanwhile); the job's record
        says so while it happens, and a failed switch gives the job back without counting an attempt."""
        loaded = self.engine.loaded_model

        def reason(text: str | None) -> Callable[[Batch], Batch]:
            return lambda b: b.model_copy(update={"status_reason": text})

        await self.store.update(
            lease.batch_id, reason(f"loading model {model!r} (replacing {loaded!r})"), fence=lease.fence
        )
        started = time.monotonic()
        try:
            how = await self.engine.switch(model)
        except Exception as exc:
            raise ModelSwitchError(f"could not load model {model!r}: {exc!r}") from exc
        elapsed = time.monotonic() - started
        metrics.model_switches.labels(how).inc()
        metrics.model_switch_seconds.observe(elapsed)
        if loaded is not None:
            metrics.model_loaded.labels(loaded).set(0)
        metrics.model_loaded.labels(model).set(1)
        log.info("model %r loaded in %.1fs (%s, replacing %r)", model, elapsed, how, loaded)
        await self.store.update(lease.batch_id, reason(None), fence=lease.fence)
        await self.store.heartbeat(self.worker_id, self.engine.loaded_model)  # claims see the new model at once

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
            await self.finisher.finalize(lease, plan, BatchStatus.FAILED, errors=[error])
            return
        if batch.status == BatchStatus.CANCELLING:
            await self.finisher.finalize(lease, plan, BatchStatus.CANCELLED)
            return
        if batch.expires_at is not None and now >= batch.expires_at:
            await self.finisher.finalize(lease, plan, BatchStatus.EXPIRED)
            return
        if not serves(self.engine, plan.model):
            await self.switch_model(lease, plan.model)
            if not serves(self.engine, plan.model):
                loaded = self.engine.loaded_model
                raise ModelSwitchError(f"the engine has {loaded!r} loaded after a switch to {plan.model!r}")
            await self.process(lease)  # from the record again: the job may have been cancelled during the switch
            return
        if batch.status == BatchStatus.VALIDATING:
            batch = await self.store.update(
                lease.batch_id,
                lambda b: b.model_copy(update={"status": BatchStatus.IN_PROGRESS, "in_progress_at": now}),
                fence=lease.fence,
            )
        log.info("job started: %d requests in %d chunks (attempt %d)", plan.valid_requests, plan.chunks, lease.attempts)
        try:
            await self.pipeline.run_chunks(lease, plan, batch)
        except JobStopError as stop:
            await self.finisher.finalize(lease, plan, stop.status)
            return
        except BaseExceptionGroup as group:  # from the chunk TaskGroup: a pause that ended the job
            if (stopped := group.subgroup(JobStopError)) is not None:
                ended = first_cause(stopped)
                assert isinstance(ended, JobStopError)
                log.info("job %s while paused", ended.status.value)
                await self.finisher.finalize(lease, plan, ended.status)
                return
            if (waited_out := group.subgroup(ModelUnavailableError)) is not None:
                error = BatchError(code="model_unavailable", message=str(first_cause(waited_out)))
                await self.finisher.finalize(lease, plan, BatchStatus.FAILED, errors=[error])
                return
            raise
        missing = sorted(set(range(plan.chunks)) - set(await self.store.checkpoints(lease.batch_id)))
        if missing:  # acknowledged commits lost (Redis failed over, or its AOF lost its last second)
            raise RuntimeError(f"chunks {missing[:10]} have no checkpoint after running; the job runs them again")
        await self.finisher.finalize(lease, plan, BatchStatus.COMPLETED)
