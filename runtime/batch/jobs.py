"""Job state in Redis: the priority queue, leases with fencing, checkpoints, batch records.

Guarantees (tested against a real redis-server):
- `enqueue` is idempotent: a batch id is in the queue at most once.
- `claim` is atomic: of N workers claiming at once, one gets a job; each claim increments the
  job's fence, so a worker whose lease ran out is refused by every fenced write afterwards.
- An expired lease puts the job back at its original priority position on the next claim.
- `commit_chunk` records a chunk only under the current fence, so each chunk counts once.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import redis.asyncio as redis
from redis.asyncio.client import Pipeline
from redis.exceptions import WatchError

from runtime.batch import keys
from runtime.batch.models import (
    TERMINAL,
    Batch,
    BatchStatus,
    ChunkCheckpoint,
    JobPlan,
    Priority,
    RequestCounts,
    StoredFile,
)
from runtime.batch.redis_client import transient_retry
from runtime.batch.storage import file_key

T = TypeVar("T")

PRIORITY_SPAN = 10**13  # larger than any epoch-ms, so rank dominates and FIFO holds within a rank


def now_ms() -> int:
    return int(time.time() * 1000)


class StaleLeaseError(RuntimeError):
    """This worker's lease was taken over (fence changed): it must stop writing for this job."""


@dataclass(frozen=True)
class Lease:
    batch_id: str
    fence: int
    attempts: int


_CLAIM = """
-- ARGV[4] names this call: redis-py sends the same EVALSHA again when the connection drops before the
-- reply, and a call that already claimed a job answers with that job instead of claiming a second one
-- (whose lease nobody would hold: it would expire and cost the job an attempt).
local replay = redis.call('GET', ARGV[4])
if replay then return cjson.decode(replay) end
local now = tonumber(ARGV[1])
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
for _, id in ipairs(expired) do
  redis.call('ZREM', KEYS[2], id)
  local score = redis.call('HGET', ARGV[3] .. id .. ':job', 'score')
  if score then redis.call('ZADD', KEYS[1], score, id) end
end
local due = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now)
for _, id in ipairs(due) do
  redis.call('ZREM', KEYS[3], id)
  local score = redis.call('HGET', ARGV[3] .. id .. ':job', 'score')
  if score then redis.call('ZADD', KEYS[1], score, id) end
end
-- Jobs for the worker's loaded model (ARGV[5]; '' for none) go first within the head's priority rank,
-- so models are not switched back and forth; the head goes first once it has waited ARGV[6] ms.
local span = tonumber(ARGV[7])
local function next_id()
  local head = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  if #head == 0 then return nil end
  if ARGV[5] == '' then return head[1] end
  local score = tonumber(head[2])
  local rank = math.floor(score / span)
  if now - (score - rank * span) >= tonumber(ARGV[6]) then return head[1] end
  local same_rank = redis.call('ZRANGEBYSCORE', KEYS[1], score, '(' .. ((rank + 1) * span), 'LIMIT', 0, 1000)
  for _, candidate in ipairs(same_rank) do
    if redis.call('HGET', ARGV[3] .. candidate .. ':job', 'model') == ARGV[5] then return candidate end
  end
  return head[1]
end
local id, job
repeat  -- a queued id whose job state expired is dropped, not claimed (HINCRBY would recreate it, TTL-less)
  id = next_id()
  if not id then return false end
  redis.call('ZREM', KEYS[1], id)
  job = ARGV[3] .. id .. ':job'
until redis.call('EXISTS', job) == 1
-- attempts counts leases in a row without a committed chunk: a job that made progress under its last
-- lease (a worker killed, Redis restarted) starts counting again; one that crashes every worker does not.
-- "Progress under the last lease" is a commit under its fence (no clocks compared).
local previous = redis.call('HGET', job, 'fence')
local fence = redis.call('HINCRBY', job, 'fence', 1)
local attempts
if previous and redis.call('HGET', job, 'progress_fence') == previous then
  attempts = 1
  redis.call('HSET', job, 'attempts', 1)
else
  attempts = redis.call('HINCRBY', job, 'attempts', 1)
end
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), id)
redis.call('SET', ARGV[4], cjson.encode({id, fence, attempts}), 'PX', 60000)  -- outlives any retry of the call
return {id, fence, attempts}
"""

_RENEW = """
if redis.call('HGET', KEYS[1], 'fence') ~= ARGV[1] then return 0 end
if not redis.call('ZSCORE', KEYS[2], ARGV[3]) then return 0 end
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
return 1
"""

_COMMIT_CHUNK = """
if redis.call('HGET', KEYS[1], 'fence') ~= ARGV[1] then return false end
-- A chunk counts once: the running totals grow only when its checkpoint is new (O(1) per commit).
if redis.call('HSETNX', KEYS[2], ARGV[2], ARGV[3]) == 1 then
  redis.call('HINCRBY', KEYS[1], 'completed', ARGV[5])
  redis.call('HINCRBY', KEYS[1], 'failed', ARGV[6])
end
redis.call('HSET', KEYS[1], 'progress_at', ARGV[4], 'progress_fence', ARGV[1])
local ttl = redis.call('PTTL', KEYS[1])
if ttl > 0 then redis.call('PEXPIRE', KEYS[2], ttl) end
local totals = redis.call('HMGET', KEYS[1], 'completed', 'failed')
return {tonumber(totals[1] or '0'), tonumber(totals[2] or '0')}
"""

_HEARTBEAT = """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if ARGV[4] == '' then redis.call('HDEL', KEYS[2], ARGV[1]) else redis.call('HSET', KEYS[2], ARGV[1], ARGV[4]) end
local beats = redis.call('HGETALL', KEYS[1])
for i = 1, #beats, 2 do
  if tonumber(beats[i + 1]) < tonumber(ARGV[3]) then
    redis.call('HDEL', KEYS[1], beats[i])
    redis.call('HDEL', KEYS[2], beats[i])
  end
end
return 1
"""
WORKER_FORGOTTEN_AFTER_MS = 24 * 3600 * 1000  # a worker silent this long leaves the fleet view

_RELEASE = """
if redis.call('HGET', KEYS[1], 'fence') ~= ARGV[1] then return 0 end
if ARGV[4] == '1' and tonumber(redis.call('HGET', KEYS[1], 'attempts') or '0') > 0 then
  redis.call('HINCRBY', KEYS[1], 'attempts', -1)
end
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[2])
return 1
"""


class JobStore:
    def __init__(self, client: redis.Redis, *, outage_seconds: float = 60.0):
        self.redis = client
        self.outage_seconds = outage_seconds
        self._claim = client.register_script(_CLAIM)
        self._renew = client.register_script(_RENEW)
        self._commit = client.register_script(_COMMIT_CHUNK)
        self._release = client.register_script(_RELEASE)
        self._heartbeat = client.register_script(_HEARTBEAT)

    async def _transaction(self, body: Callable[[Pipeline], Awaitable[T]]) -> T:
        """Run a WATCH transaction, again on a lost watch and, for up to `outage_seconds`, on a lost Redis."""
        async for attempt in transient_retry(self.outage_seconds):
            with attempt:
                async with self.redis.pipeline(transaction=True) as pipe:
                    while True:
                        try:
                            return await body(pipe)
                        except WatchError:
                            await pipe.reset()
        raise AssertionError("unreachable")

    # --- files ---------------------------------------------------------------------------

    async def save_file(self, file: StoredFile) -> None:
        """The record, its place in the listings (which expire no sooner than it) and, when it expires, its
        object's place in the expiry index, all at once: the sweep (runtime.batch.expiry) deletes the object
        at that time, whatever the bucket's lifecycle rule does."""
        created = now_ms()  # the listing's order: created_at has whole seconds only
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(keys.file(file.id), file.model_dump_json(), exat=file.expires_at)
            if file.expires_at:
                pipe.zadd(keys.EXPIRY, {file_key(file.id): file.expires_at})
            indexes = [keys.FILES] + ([keys.owner_files(file.owner)] if file.owner else [])
            for index in indexes:
                pipe.zadd(index, {file.id: created}, nx=True)
                if file.expires_at:
                    pipe.expireat(index, file.expires_at, nx=True)
                    pipe.expireat(index, file.expires_at, gt=True)
            await pipe.execute()

    async def list_files(
        self, *, owner: str | None, purpose: str | None, limit: int, newest_first: bool, after: str | None
    ) -> tuple[list[StoredFile], bool]:
        """`limit` files after the file `after`, in creation order: every file, or `owner`'s only."""
        index = keys.FILES if owner is None else keys.owner_files(owner)
        ids = _texts(await (self.redis.zrevrange if newest_first else self.redis.zrange)(index, 0, -1))
        if after is not None:
            if after not in ids:
                return [], False
            ids = ids[ids.index(after) + 1 :]
        found: list[StoredFile] = []
        gone: list[str] = []
        for start in range(0, len(ids), 500):  # read in pages until the page is full (purpose filters)
            page = ids[start : start + 500]
            for file_id, raw in zip(page, await self.redis.mget([keys.file(i) for i in page]), strict=True):
                if raw is None:
                    gone.append(file_id)
                    continue
                record = StoredFile.model_validate_json(raw)
                expired = record.expires_at is not None and record.expires_at <= time.time()
                if not expired and (purpose is None or record.purpose == purpose):  # so has_more is right
                    found.append(record)
            if len(found) > limit:
                break
        if gone:  # records past their expiry: prune the index
            await self.redis.zrem(index, *gone)
        return found[:limit], len(found) > limit

    async def get_file(self, file_id: str) -> StoredFile | None:
        raw = await self.redis.get(keys.file(file_id))
        return StoredFile.model_validate_json(raw) if raw else None

    async def record_file(
        self, file_id: str, *, owner: str, size: int, filename: str, purpose: str, retention_seconds: int
    ) -> StoredFile:
        """Save a file object owned by the key id `owner`; it expires (here and in the API) in `retention_seconds`."""
        now = int(time.time())
        file = StoredFile(
            id=file_id,
            bytes=size,
            created_at=now,
            expires_at=now + retention_seconds,
            filename=filename,
            purpose=purpose,
            owner=owner,
        )
        await self.save_file(file)
        return file

    async def delete_file(self, file_id: str, owner: str | None) -> bool:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(keys.file(file_id))
            pipe.zrem(keys.FILES, file_id)
            pipe.zrem(keys.EXPIRY, file_key(file_id))  # the API deleted its object first
            if owner:
                pipe.zrem(keys.owner_files(owner), file_id)
            deleted, *_ = await pipe.execute()
        return bool(deleted)

    # --- batches -------------------------------------------------------------------------

    async def create(self, batch: Batch, plan: JobPlan, *, retention_seconds: int) -> None:
        """Record the batch and put it in the queue, all at once (idempotent per batch id).

        Every key written here expires: a job no worker ever ends is gone `retention_seconds` after
        its completion window, like a finished one. The listing indexes drop ids older than that.
        A batch id already recorded changes nothing: a replayed create (redis-py retrying a transaction
        whose reply was lost) must not queue a job again that a worker holds or has finished.
        """
        batch_key = keys.batch(batch.id)

        async def body(pipe: Pipeline) -> None:
            await pipe.watch(batch_key)
            if await pipe.exists(batch_key):
                return
            created = now_ms()
            score = plan.priority.rank * PRIORITY_SPAN + created
            expire_at = (batch.expires_at or batch.created_at) + retention_seconds
            horizon = created - (expire_at - batch.created_at) * 1000  # ids created before this have expired
            pipe.multi()
            pipe.set(batch_key, batch.model_dump_json(), exat=expire_at)
            pipe.set(keys.plan(batch.id), plan.model_dump_json(), exat=expire_at)
            pipe.hset(  # bad lines count as failed from the start; the model groups claims
                keys.job(batch.id),
                mapping={"score": score, "completed": 0, "failed": plan.invalid_lines, "model": plan.model},
            )
            pipe.expireat(keys.job(batch.id), expire_at)
            pipe.zadd(keys.BATCHES, {batch.id: created})
            pipe.zremrangebyscore(keys.BATCHES, "-inf", f"({horizon}")
            pipe.zadd(keys.ACTIVE, {batch.id: created})
            owner = keys.owner_batches(plan.key_id)
            pipe.zadd(owner, {batch.id: created})
            pipe.zremrangebyscore(owner, "-inf", f"({horizon}")
            pipe.expireat(owner, expire_at, nx=True)  # a new index (GT alone treats "no expiry" as infinite)
            pipe.expireat(owner, expire_at, gt=True)
            pipe.zadd(keys.QUEUE, {batch.id: score})
            pipe.rpush(keys.WAKE, batch.id)
            pipe.ltrim(keys.WAKE, -100, -1)
            await pipe.execute()

        await self._transaction(body)

    async def get(self, batch_id: str) -> Batch | None:
        found = await self._batches([batch_id])
        return found[0] if found else None

    async def plan(self, batch_id: str) -> JobPlan:
        raw = await self.redis.get(keys.plan(batch_id))
        if raw is None:
            raise KeyError(f"batch {batch_id} has no plan in Redis")
        return JobPlan.model_validate_json(raw)

    async def owner(self, batch_id: str) -> str | None:
        """The key id that created the batch (None when it has no plan on record)."""
        raw = await self.redis.get(keys.plan(batch_id))
        return JobPlan.model_validate_json(raw).key_id if raw else None

    async def list_batches(
        self, *, limit: int, after: str | None, owner: str | None = None
    ) -> tuple[list[Batch], bool]:
        """Newest first, `limit` at a time after the batch `after`: every batch, or `owner`'s only."""
        index = keys.BATCHES if owner is None else keys.owner_batches(owner)
        start = 0
        if after is not None:
            rank = await self.redis.zrevrank(index, after)
            if rank is None:
                return [], False
            start = int(rank) + 1  # type: ignore[arg-type]  # no WITHSCORE: an int
        ids = _texts(await self.redis.zrevrange(index, start, start + limit))
        batches = await self._batches(ids[:limit])
        if owner is not None and len(batches) < len(ids[:limit]):  # records past their retention: prune
            gone = set(ids[:limit]) - {b.id for b in batches}
            await self.redis.zrem(index, *gone)
        return batches, len(ids) > limit

    async def active(self) -> list[Batch]:
        """The batches not yet ended, oldest first: what /metrics reads, whatever the history's size."""
        ids = _texts(await self.redis.zrange(keys.ACTIVE, 0, -1))
        batches = await self._batches(ids)
        if len(batches) < len(ids):  # a record expired without an end (no worker ran it): drop it
            await self.redis.zrem(keys.ACTIVE, *(set(ids) - {b.id for b in batches}))
        return [b for b in batches if not b.status.terminal]

    async def _batches(self, ids: list[str]) -> list[Batch]:
        """The batch objects, with a running job's progress from its totals (the commit script keeps them):
        the record itself gets its counts only when the job ends, so no commit contends for it."""
        if not ids:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.mget([keys.batch(i) for i in ids])
            for batch_id in ids:
                pipe.hmget(keys.job(batch_id), "completed", "failed")
            raws, *totals = await pipe.execute()
        batches = []
        for raw, (completed, failed) in zip(raws, totals, strict=True):
            if not raw:
                continue
            batch = Batch.model_validate_json(raw)
            if completed is not None and not batch.status.terminal:
                counts = batch.request_counts
                progress = RequestCounts(
                    total=counts.total,
                    completed=max(counts.completed, int(completed)),
                    failed=max(counts.failed, int(failed or 0)),
                )
                batch = batch.model_copy(update={"request_counts": progress})
            batches.append(batch)
        return batches

    async def update(self, batch_id: str, change: Callable[[Batch], Batch], *, fence: int | None = None) -> Batch:
        """Read-modify-write the batch object; with `fence`, only while this worker holds the job."""
        batch_key, job_key = keys.batch(batch_id), keys.job(batch_id)

        async def body(pipe: Pipeline) -> Batch:
            await pipe.watch(batch_key, job_key)
            if fence is not None and int(await pipe.hget(job_key, "fence") or 0) != fence:
                raise StaleLeaseError(f"batch {batch_id}: fence {fence} is no longer current")
            raw = await pipe.get(batch_key)
            if raw is None:
                raise KeyError(f"batch {batch_id} not found")
            batch = change(Batch.model_validate_json(raw))
            pipe.multi()
            pipe.set(batch_key, batch.model_dump_json(), keepttl=True)
            await pipe.execute()
            return batch

        return await self._transaction(body)

    async def cancel(self, batch_id: str, *, retention_seconds: int) -> Batch | None:
        """Queued: cancelled at once, kept `retention_seconds`. Running: `cancelling`, the worker ends it."""
        batch_key = keys.batch(batch_id)

        async def body(pipe: Pipeline) -> Batch | None:
            await pipe.watch(batch_key, keys.QUEUE, keys.DELAYED, keys.LEASES)
            raw = await pipe.get(batch_key)
            if raw is None:
                return None
            batch = Batch.model_validate_json(raw)
            if batch.status in TERMINAL or batch.status == BatchStatus.CANCELLING:
                return batch
            now = int(time.time())
            leased = await pipe.zscore(keys.LEASES, batch_id) is not None
            pipe.multi()
            if leased:
                batch = batch.model_copy(update={"status": BatchStatus.CANCELLING, "cancelling_at": now})
                pipe.set(batch_key, batch.model_dump_json(), keepttl=True)
            else:
                batch = batch.model_copy(
                    update={"status": BatchStatus.CANCELLED, "cancelling_at": now, "cancelled_at": now}
                )
                pipe.zrem(keys.QUEUE, batch_id)
                pipe.zrem(keys.DELAYED, batch_id)
                pipe.zrem(keys.ACTIVE, batch_id)
                pipe.delete(keys.job(batch_id), keys.chunks(batch_id))
                pipe.set(batch_key, batch.model_dump_json(), exat=now + retention_seconds)
                pipe.expireat(keys.plan(batch_id), now + retention_seconds)
            await pipe.execute()
            return batch

        return await self._transaction(body)

    # --- queue and leases ----------------------------------------------------------------

    async def claim(
        self, lease_seconds: float, *, loaded_model: str | None = None, switch_after_seconds: float = 0.0
    ) -> Lease | None:
        """The next job: the queue's head, or (given the worker's loaded model) the first job of that model
        in the head's priority rank, unless the head has waited `switch_after_seconds` already."""
        call = keys.claim_call(uuid.uuid4().hex)  # this call's name: a retry of it is not a new claim
        result = await self._claim(
            keys=[keys.QUEUE, keys.LEASES, keys.DELAYED],
            args=[
                now_ms(),
                int(lease_seconds * 1000),
                keys.PREFIX + "batch:",
                call,
                loaded_model or "",
                int(switch_after_seconds * 1000),
                PRIORITY_SPAN,
            ],
        )
        if not result:
            return None
        batch_id, fence, attempts = result
        return Lease(batch_id=_text(batch_id), fence=int(fence), attempts=int(attempts))

    async def renew(self, lease: Lease, lease_seconds: float) -> bool:
        return bool(
            await self._renew(
                keys=[keys.job(lease.batch_id), keys.LEASES],
                args=[lease.fence, now_ms() + int(lease_seconds * 1000), lease.batch_id],
            )
        )

    async def release(self, lease: Lease, delay_seconds: float, *, count_attempt: bool = True) -> bool:
        """Give the job back to be claimed again after `delay_seconds`; without `count_attempt` (Redis or
        S3 failed, not the job) this lease does not count towards the job's attempts."""
        return bool(
            await self._release(
                keys=[keys.job(lease.batch_id), keys.LEASES, keys.DELAYED],
                args=[lease.fence, lease.batch_id, now_ms() + int(delay_seconds * 1000), "0" if count_attempt else "1"],
            )
        )

    async def finish(self, lease: Lease, batch: Batch, retention_seconds: int) -> None:
        """Write the terminal batch object and drop the lease and job state in one transaction.

        A connection lost after Redis ran the transaction and before its reply arrived looks, on the
        retry, like a lease taken over (the job state is gone): finding its own terminal record
        there, finish knows the write was its own and returns."""
        batch_key, job_key = keys.batch(lease.batch_id), keys.job(lease.batch_id)
        written = batch.model_dump_json()

        async def already_written(client: redis.Redis | Pipeline) -> bool:
            return await client.get(batch_key) in (written, written.encode())

        async def body(pipe: Pipeline) -> None:
            await pipe.watch(job_key)
            if int(await pipe.hget(job_key, "fence") or 0) != lease.fence:
                if await already_written(pipe):
                    return
                raise StaleLeaseError(f"batch {lease.batch_id}: fence {lease.fence} is no longer current")
            plan_raw = await pipe.get(keys.plan(lease.batch_id))
            expire_at = int(time.time()) + retention_seconds
            pipe.multi()
            pipe.set(batch_key, written, exat=expire_at)
            pipe.expireat(keys.plan(lease.batch_id), expire_at)
            if plan_raw is not None:  # the owner's index lives as long as its newest batch
                owner = keys.owner_batches(JobPlan.model_validate_json(plan_raw).key_id)
                pipe.expireat(owner, expire_at, nx=True)
                pipe.expireat(owner, expire_at, gt=True)
            pipe.delete(job_key, keys.chunks(lease.batch_id))
            pipe.zrem(keys.LEASES, lease.batch_id)
            pipe.zrem(keys.QUEUE, lease.batch_id)  # in case its lease ran out and it went back meanwhile
            pipe.zrem(keys.DELAYED, lease.batch_id)
            pipe.zrem(keys.ACTIVE, lease.batch_id)
            try:
                await pipe.execute()
            except WatchError as exc:  # redis-py also says so when the connection dropped during EXEC
                if await already_written(self.redis):
                    return
                raise StaleLeaseError(f"batch {lease.batch_id}: taken over while finishing") from exc

        await self._transaction(body)

    async def progress_at(self, batch_id: str) -> float | None:
        """Seconds since the epoch when the job last committed a chunk (None before its first)."""
        raw = await self.redis.hget(keys.job(batch_id), "progress_at")
        return int(raw) / 1000 if raw else None

    async def forget(self, lease: Lease) -> None:
        """Drop a claimed job that has nothing left to do (its record expired or it already ended)."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zrem(keys.LEASES, lease.batch_id)
            pipe.zrem(keys.ACTIVE, lease.batch_id)
            pipe.delete(keys.job(lease.batch_id), keys.chunks(lease.batch_id))
            await pipe.execute()

    async def memory_paused(self, host: str) -> bool:
        """Whether the memory guard of `host` has paused new work there (keys.memory_pause)."""
        return bool(await self.redis.exists(keys.memory_pause(host)))

    async def wait_for_work(self, timeout_seconds: float) -> None:
        """Block until a job is enqueued or the timeout passes (the queue itself is the truth)."""
        await self.redis.blpop([keys.WAKE], timeout=timeout_seconds)

    async def queue_depth(self) -> int:
        return await self.redis.zcard(keys.QUEUE) + await self.redis.zcard(keys.DELAYED)

    async def queued_ahead(self, batch_id: str) -> int | None:
        rank = await self.redis.zrank(keys.QUEUE, batch_id)
        return None if rank is None else int(rank)  # type: ignore[arg-type]  # no WITHSCORE: an int

    async def queued_before(self, batch_id: str) -> set[str]:
        """The jobs that will be claimed before this queued one (none when it is not queued)."""
        queue = _texts(await self.redis.zrange(keys.QUEUE, 0, -1))
        return set(queue[: queue.index(batch_id)]) if batch_id in queue else set()

    # --- a finished job's figures --------------------------------------------------------

    async def save_stats(self, batch_id: str, stats: dict[str, Any], retention_seconds: int) -> None:
        """The seeds' results figures (latency, tokens), kept as long as the job's record."""
        await self.redis.set(keys.stats(batch_id), json.dumps(stats), ex=retention_seconds)

    async def stats(self, batch_id: str) -> dict[str, Any]:
        raw = await self.redis.get(keys.stats(batch_id))
        stats: dict[str, Any] = json.loads(raw) if raw else {}
        return stats

    # --- checkpoints ---------------------------------------------------------------------

    async def commit_chunk(self, lease: Lease, checkpoint: ChunkCheckpoint) -> tuple[int, int]:
        """Record the chunk under the lease's fence; returns the job's (completed, failed) so far."""
        totals = await self._commit(
            keys=[keys.job(lease.batch_id), keys.chunks(lease.batch_id)],
            args=[
                lease.fence,
                checkpoint.index,
                checkpoint.model_dump_json(),
                now_ms(),
                checkpoint.completed,
                checkpoint.failed,
            ],
        )
        if not totals:
            raise StaleLeaseError(
                f"batch {lease.batch_id}: chunk {checkpoint.index} refused, fence {lease.fence} is stale"
            )
        return int(totals[0]), int(totals[1])

    async def checkpoints(self, batch_id: str) -> dict[int, ChunkCheckpoint]:
        raw = await self.redis.hgetall(keys.chunks(batch_id))
        return {int(k): ChunkCheckpoint.model_validate_json(v) for k, v in raw.items()}

    # --- fleet figures -------------------------------------------------------------------

    async def record_throughput(self, requests_per_second: float) -> None:
        await self.redis.set(keys.THROUGHPUT, f"{requests_per_second:.3f}", ex=3600)

    async def throughput(self) -> float | None:
        raw = await self.redis.get(keys.THROUGHPUT)
        return float(raw) if raw else None

    async def heartbeat(self, worker_id: str, loaded_model: str | None = None) -> None:
        """Beat for this worker with the model it has loaded, and forget workers silent for a day (the
        hashes stay the size of the fleet)."""
        now = now_ms()
        await self._heartbeat(
            keys=[keys.WORKERS, keys.WORKER_MODELS],
            args=[worker_id, now, now - WORKER_FORGOTTEN_AFTER_MS, loaded_model or ""],
        )

    async def loaded_models(self, within_seconds: float) -> set[str]:
        """The models live workers have loaded now (a worker whose engine serves any model names none)."""
        live = set(await self.live_workers(within_seconds))
        models = await self.redis.hgetall(keys.WORKER_MODELS)
        return {_text(model) for worker, model in models.items() if _text(worker) in live}

    async def live_workers(self, within_seconds: float) -> list[str]:
        cutoff = now_ms() - within_seconds * 1000
        return [_text(w) for w, beat in (await self.redis.hgetall(keys.WORKERS)).items() if int(beat) >= cutoff]


def priority_of(metadata: dict[str, str] | None) -> Priority:
    value = (metadata or {}).get("priority", Priority.NORMAL.value)
    return Priority(value)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _texts(values: Iterable[Any]) -> list[str]:
    """Members of a range reply without scores (redis-py's types allow for WITHSCORES pairs too)."""
    return [_text(v) for v in values]
