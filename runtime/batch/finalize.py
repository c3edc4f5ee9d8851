"""The end of a job: its chunk results joined into the output and error files, and its terminal
state written once (counts, usage, stats), then its webhook queued and its scratch objects deleted."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor

import redis.asyncio as redis

from runtime.batch import metrics, webhooks
from runtime.batch.jobs import JobStore, Lease
from runtime.batch.models import BatchError, BatchErrors, BatchStatus, BatchUsage, FileObject, JobPlan, RequestCounts
from runtime.batch.settings import BatchSettings
from runtime.batch.storage import ObjectStore, file_key, invalid_lines_key, with_storage_retry

log = logging.getLogger("runtime.batch.worker")


class JobFinisher:
    def __init__(self, settings: BatchSettings, store: JobStore, objects: ObjectStore, client: redis.Redis):
        self.settings = settings
        self.store = store
        self.objects = objects
        self.redis = client

    async def _counts(self, batch_id: str, plan: JobPlan) -> RequestCounts:
        done = (await self.store.checkpoints(batch_id)).values()
        return RequestCounts(
            total=plan.valid_requests + plan.invalid_lines,
            completed=sum(c.completed for c in done),
            failed=plan.invalid_lines + sum(c.failed for c in done),
        )

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
        await self.store.save_stats(batch_id, stats, self.settings.retention_seconds)
        await self.store.finish(lease, batch, self.settings.retention_seconds)
        metrics.jobs_finished.labels(status.value).inc()
        if plan.webhook_url:
            await webhooks.enqueue(self.redis, plan.webhook_url, batch, plan.key_id)
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

        size = await with_storage_retry(self.settings.storage_retry_seconds, asyncio.to_thread, join)
        return await self.store.record_file(
            file_id,
            owner=plan.key_id,
            size=size,
            filename=f"{batch_id}_{kind}.jsonl",
            purpose="batch_output",
            retention_seconds=plan.output_retention_seconds or self.settings.retention_seconds,
        )
