"""The Redis job store against a real redis-server: atomic claims, priorities, leases, fencing."""

from __future__ import annotations

import asyncio
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import redis.asyncio as redis

from runtime.batch import auth, keys, webhooks
from runtime.batch.jobs import JobStore, Lease, StaleLeaseError
from runtime.batch.models import Batch, BatchStatus, ChunkCheckpoint, JobPlan, Priority, RequestCounts
from runtime.batch.urls import UrlPolicy
from tests.integration.batch_fixtures import run_private

pytestmark = pytest.mark.integration
RETENTION_S = 3600


@pytest.fixture
def run(redis_server):
    """Run `test(store)` in a fresh event loop against an empty Redis (no async plugin needed)."""

    def runner(test) -> None:
        async def body() -> None:
            admin = redis.Redis.from_url(redis_server.admin_url)  # the batch services' user may not flush
            await admin.flushdb()
            await admin.aclose()
            client = redis.Redis.from_url(redis_server.url, decode_responses=True)  # as the services log in
            try:
                await test(JobStore(client))
            finally:
                await client.aclose()

        run_private(body())

    return runner


async def matching(store: JobStore, pattern: str) -> set[str]:
    """Keys matching `pattern`, by SCAN: the batch services' Redis user may not run KEYS."""
    return {key async for key in store.redis.scan_iter(match=pattern)}


async def add_job(store: JobStore, batch_id: str, priority: Priority = Priority.NORMAL, model: str = "m") -> None:
    now = int(time.time())
    batch = Batch(id=batch_id, endpoint="/v1/chat/completions", input_file_id="f", status="validating", created_at=now)
    plan = JobPlan(
        batch_id=batch_id, model=model, priority=priority, chunks=2, chunk_size=10, valid_requests=20,
        invalid_lines=0, key_id="k",
    )  # fmt: skip
    await store.create(batch, plan, retention_seconds=RETENTION_S)


def test_a_job_claimed_by_five_workers_at_once_runs_once(run) -> None:
    async def test(store: JobStore) -> None:
        await add_job(store, "b1")
        await add_job(store, "b1")  # enqueue is idempotent
        leases = await asyncio.gather(*(store.claim(30) for _ in range(5)))
        won = [lease for lease in leases if lease is not None]
        assert [(lease.batch_id, lease.fence, lease.attempts) for lease in won] == [("b1", 1, 1)]

    run(test)


def test_a_claim_whose_reply_was_lost_is_not_a_second_claim(run, redis_server) -> None:
    """The connection drops after Redis ran the claim and before its reply: redis-py sends the same
    EVALSHA again. That retry must answer with the job already claimed, not lease a second one (the
    first lease would be held by nobody, expire, and cost its job an attempt)."""
    from runtime.batch.redis_client import connect
    from tests.integration.faults import TcpProxy

    proxy = TcpProxy(redis_server.port)

    async def test(store: JobStore) -> None:
        client = connect(redis_server.url.replace(f":{redis_server.port}/", f":{proxy.port}/"), outage_seconds=10)
        through_proxy = JobStore(client)
        try:
            assert await through_proxy.claim(30) is None  # loads the script: the lost reply is the claim's
            await add_job(store, "b1")
            await add_job(store, "b2")
            proxy.lose_next_reply()
            lease = await through_proxy.claim(30)
        finally:
            await client.aclose()
        assert lease is not None and (lease.batch_id, lease.fence, lease.attempts) == ("b1", 1, 1)
        assert await store.redis.zrange(keys.QUEUE, 0, -1) == ["b2"]  # b2 was not claimed by the retry
        assert await store.redis.zrange(keys.LEASES, 0, -1) == ["b1"]

    try:
        run(test)
    finally:
        proxy.close()


def test_a_finish_whose_reply_was_lost_is_not_a_lost_lease(run, redis_server, monkeypatch) -> None:
    """The connection drops after Redis ran the finishing transaction and before its reply: the retry
    finds the job state gone. That is the job's own write, not another worker's takeover: finish
    returns (so the worker goes on to queue the webhook and delete the scratch objects)."""
    from redis.asyncio.client import Pipeline

    from runtime.batch.redis_client import connect
    from tests.integration.faults import TcpProxy

    proxy = TcpProxy(redis_server.port)
    real_execute = Pipeline.execute
    armed = [True]

    async def execute_losing_the_first_transaction_reply(self: Pipeline, raise_on_error: bool = True) -> list:
        if self.explicit_transaction and armed[0]:  # MULTI … EXEC: Redis applies it, the reply is lost
            armed[0] = False
            proxy.lose_next_reply()
        return await real_execute(self, raise_on_error)

    async def test(store: JobStore) -> None:
        await add_job(store, "b1")
        lease = await store.claim(30)
        assert lease is not None
        done = (await store.get("b1")).model_copy(update={"status": BatchStatus.COMPLETED, "completed_at": 1})
        client = connect(redis_server.url.replace(f":{redis_server.port}/", f":{proxy.port}/"), outage_seconds=10)
        monkeypatch.setattr(Pipeline, "execute", execute_losing_the_first_transaction_reply)
        try:
            await JobStore(client).finish(lease, done, retention_seconds=3600)
        finally:
            monkeypatch.setattr(Pipeline, "execute", real_execute)
            await client.aclose()
        assert not armed[0], "the transaction's reply was lost"
        assert (await store.get("b1")).status == BatchStatus.COMPLETED
        assert not await store.redis.exists(keys.job("b1"))

    try:
        run(test)
    finally:
        proxy.close()


def test_priorities_then_first_in_first_out(run) -> None:
    async def test(store: JobStore) -> None:
        for batch_id, priority in [
            ("low", Priority.LOW),
            ("n1", Priority.NORMAL),
            ("high", Priority.HIGH),
            ("n2", Priority.NORMAL),
        ]:
            await add_job(store, batch_id, priority)
            await asyncio.sleep(0.002)  # distinct enqueue milliseconds
        # What the API's estimate counts as ahead of a queued job, and its place in the line.
        assert await store.queued_before("n2") == {"high", "n1"}
        assert (await store.queued_ahead("n2"), await store.queued_ahead("high")) == (2, 0)
        assert await store.queued_before("high") == set()
        assert await store.queued_before("unknown") == set()
        order = [(await store.claim(30)).batch_id for _ in range(4)]
        assert order == ["high", "n1", "n2", "low"]
        assert await store.claim(30) is None
        assert await store.queued_before("low") == set() and await store.queued_ahead("low") is None

    run(test)


def test_a_finished_jobs_figures_are_kept_as_long_as_its_record(run) -> None:
    async def test(store: JobStore) -> None:
        assert await store.stats("b1") == {}
        await store.save_stats("b1", {"prompt_tokens": 7, "avg_response_time": None}, RETENTION_S)
        assert await store.stats("b1") == {"prompt_tokens": 7, "avg_response_time": None}
        assert 0 < await store.redis.ttl(keys.stats("b1")) <= RETENTION_S

    run(test)


def test_expired_lease_returns_the_job_and_fences_out_the_old_worker(run) -> None:
    async def test(store: JobStore) -> None:
        await add_job(store, "b1")
        first = await store.claim(0.05)
        assert await store.claim(30) is None  # still leased
        deadline = time.monotonic() + 5
        second = None
        while second is None and time.monotonic() < deadline:
            second = await store.claim(30)
        assert (second.batch_id, second.fence, second.attempts) == ("b1", 2, 2)
        checkpoint = ChunkCheckpoint(index=0, output_key="o", error_key="e", completed=10, failed=0)
        with pytest.raises(StaleLeaseError):
            await store.commit_chunk(first, checkpoint)
        assert not await store.renew(first, 30)
        await store.commit_chunk(second, checkpoint)
        assert list(await store.checkpoints("b1")) == [0]

    run(test)


def test_finish_leaves_only_the_documented_keys(run) -> None:
    async def test(store: JobStore) -> None:
        await add_job(store, "b1")
        lease = await store.claim(30)
        await store.commit_chunk(lease, ChunkCheckpoint(index=0, output_key="o", error_key="e", completed=10, failed=0))
        batch = (await store.get("b1")).model_copy(update={"status": BatchStatus.COMPLETED})
        await store.finish(lease, batch, retention_seconds=3600)
        calls = await matching(store, keys.claim_call("*"))
        assert len(calls) == 1 and 0 < await store.redis.pttl(calls.pop()) <= 60_000  # the claim's, a minute
        assert await matching(store, "*") - await matching(store, keys.claim_call("*")) == {
            keys.batch("b1"),
            keys.plan("b1"),
            keys.BATCHES,
            keys.owner_batches("k"),
            keys.WAKE,
        }
        for expiring in (keys.batch("b1"), keys.plan("b1"), keys.owner_batches("k")):
            assert 0 < await store.redis.ttl(expiring) <= 3600, expiring
        other = batch.model_copy(update={"status": BatchStatus.FAILED})
        with pytest.raises(StaleLeaseError):  # the job state is gone: a stale holder writes nothing else
            await store.finish(lease, other, retention_seconds=3600)
        assert (await store.get("b1")).status == BatchStatus.COMPLETED
        await store.finish(lease, batch, retention_seconds=3600)  # its own write again: nothing to do

    run(test)


def test_cancel_of_a_queued_job_removes_it_from_the_queue(run) -> None:
    async def test(store: JobStore) -> None:
        await add_job(store, "running")
        await asyncio.sleep(0.002)  # distinct enqueue milliseconds: "running" is claimed first
        await add_job(store, "queued")
        lease = await store.claim(30)
        assert lease.batch_id == "running"
        # A queued job ends at once: out of the queue and the active index, its job state gone.
        assert (await store.cancel("queued", retention_seconds=RETENTION_S)).status == BatchStatus.CANCELLED
        assert await store.queue_depth() == 0 and await store.queued_ahead("queued") is None
        assert not await store.redis.exists(keys.job("queued"), keys.chunks("queued"))
        assert await store.redis.zscore(keys.ACTIVE, "queued") is None
        # A running job is only marked: its worker sees it at the next chunk and ends it.
        cancelling = await store.cancel("running", retention_seconds=RETENTION_S)
        assert cancelling.status == BatchStatus.CANCELLING
        assert await store.redis.zscore(keys.LEASES, "running") is not None  # still leased to its worker
        assert await store.redis.zscore(keys.ACTIVE, "running") is not None
        assert (await store.get("running")).status == BatchStatus.CANCELLING

    run(test)


def test_every_key_a_new_job_writes_expires_and_a_cancelled_queued_job_leaves_only_its_records(run) -> None:
    async def test(store: JobStore) -> None:
        await add_job(store, "b1")
        for written in (keys.batch("b1"), keys.plan("b1"), keys.job("b1"), keys.owner_batches("k")):
            assert 0 < await store.redis.ttl(written) <= RETENTION_S, written
        assert [b.id for b in await store.active()] == ["b1"]
        await store.cancel("b1", retention_seconds=RETENTION_S)
        assert await store.redis.zrange(keys.ACTIVE, 0, -1) == []  # /metrics no longer reads it
        assert not await store.redis.exists(keys.job("b1"), keys.chunks("b1"))
        for kept in (keys.batch("b1"), keys.plan("b1")):
            assert 0 < await store.redis.ttl(kept) <= RETENTION_S, kept

    run(test)


def test_the_listing_indexes_drop_ids_whose_records_have_expired(run) -> None:
    async def test(store: JobStore) -> None:
        old_ms = int((time.time() - 2 * RETENTION_S) * 1000)  # created before the retention horizon
        await store.redis.zadd(keys.BATCHES, {"long-gone": old_ms})
        await store.redis.zadd(keys.owner_batches("k"), {"long-gone": old_ms})
        await add_job(store, "b1")
        assert await store.redis.zrange(keys.BATCHES, 0, -1) == ["b1"]
        assert await store.redis.zrange(keys.owner_batches("k"), 0, -1) == ["b1"]

    run(test)


def test_a_chunk_counts_once_and_the_counts_never_go_back(run) -> None:
    async def test(store: JobStore) -> None:
        await add_job(store, "b1")
        lease = await store.claim(30)
        chunk = ChunkCheckpoint(index=0, output_key="o", error_key="e", completed=9, failed=1)
        assert await store.commit_chunk(lease, chunk) == (9, 1)
        assert await store.commit_chunk(lease, chunk) == (9, 1)  # a replayed commit adds nothing
        assert await store.commit_chunk(lease, chunk.model_copy(update={"index": 1})) == (18, 2)
        assert await store.redis.ttl(keys.chunks("b1")) > 0
        # the batch object a client reads carries the totals while the job runs, without a write per commit
        assert (await store.get("b1")).request_counts == RequestCounts(total=0, completed=18, failed=2)
        assert [b.request_counts.completed for b in await store.active()] == [18]

    run(test)


def test_attempts_count_leases_in_a_row_without_progress_and_not_outages(run) -> None:
    async def test(store: JobStore) -> None:
        await add_job(store, "b1")
        chunk = ChunkCheckpoint(index=0, output_key="o", error_key="e", completed=10, failed=0)

        async def reclaim(lease):
            await store.release(lease, delay_seconds=0)
            return await store.claim(30)

        first = await store.claim(30)
        second = await reclaim(first)  # no chunk committed: counts
        assert second.attempts == 2
        await store.commit_chunk(second, chunk)
        third = await reclaim(second)  # progress under the last lease: counting starts again
        assert third.attempts == 1
        fourth = await reclaim(third)  # no progress under the third: counts again
        assert fourth.attempts == 2
        await store.release(fourth, delay_seconds=0, count_attempt=False)  # Redis or S3 failed, not the job
        assert (await store.claim(30)).attempts == 2

    run(test)


def test_a_queued_id_whose_job_state_expired_is_dropped_not_claimed(run) -> None:
    async def test(store: JobStore) -> None:
        await add_job(store, "gone")
        await add_job(store, "b2")
        await store.redis.delete(keys.job("gone"))  # as its TTL would
        lease = await store.claim(30)
        assert lease.batch_id == "b2"
        assert not await store.redis.exists(keys.job("gone"))  # not recreated without a TTL
        assert await store.claim(30) is None

    run(test)


def test_claims_group_jobs_by_the_loaded_model_within_a_priority(run) -> None:
    """A worker with model a loaded takes a's jobs first (no switching back and forth), but never ahead of a
    higher priority, and the head goes first once it has waited the switch bound."""

    async def test(store: JobStore) -> None:
        for batch_id, model, priority in [
            ("a1", "a", Priority.NORMAL),
            ("b1", "b", Priority.NORMAL),
            ("a2", "a", Priority.NORMAL),
            ("b2", "b", Priority.LOW),
            ("a3", "a", Priority.LOW),
        ]:
            await add_job(store, batch_id, priority, model)
            await asyncio.sleep(0.002)  # distinct enqueue milliseconds

        async def claim(loaded: str | None, after: float = 600) -> str:
            lease = await store.claim(30, loaded_model=loaded, switch_after_seconds=after)
            assert lease is not None
            return lease.batch_id

        assert await claim("b") == "b1"  # b's job jumps a1 within the normal rank
        assert await claim("b") == "a1"  # no b left in the normal rank: the head, not the low-priority b2
        assert await claim("a") == "a2"
        assert await claim("a") == "a3"  # within the low rank, a's job before b2, which came first
        assert await claim("a") == "b2"
        assert await store.claim(30, loaded_model="a") is None

        await add_job(store, "old-b", model="b")
        await asyncio.sleep(0.05)
        await add_job(store, "new-a", model="a")
        assert await claim("a", after=0.01) == "old-b"  # waited past the bound: the switch happens
        assert await claim("a", after=0.01) == "new-a"

    run(test)


def test_heartbeats_say_which_model_each_live_worker_has_loaded(run) -> None:
    async def test(store: JobStore) -> None:
        await store.heartbeat("w1", "a")
        await store.heartbeat("w2", None)  # serves every model (http engine): names none
        await store.heartbeat("w3", "b")
        assert await store.loaded_models(60) == {"a", "b"}
        await store.heartbeat("w3", "a")  # switched
        assert await store.loaded_models(60) == {"a"}
        await store.redis.hset(keys.WORKERS, "w1", int((time.time() - 2 * 86400) * 1000))
        await store.redis.hset(keys.WORKER_MODELS, "w1", "old")
        await store.heartbeat("w3", "b")  # the day-old worker is forgotten in both hashes
        assert set(await store.redis.hkeys(keys.WORKER_MODELS)) == {"w3"}
        await store.redis.hset(keys.WORKERS, "w3", int(time.time() * 1000) - 120_000)  # silent two minutes
        assert await store.loaded_models(60) == set()

    run(test)


def test_the_fleet_view_forgets_workers_silent_for_a_day(run) -> None:
    async def test(store: JobStore) -> None:
        await store.redis.hset(keys.WORKERS, "gone", int((time.time() - 2 * 86400) * 1000))
        await store.heartbeat("alive")
        assert set(await store.redis.hkeys(keys.WORKERS)) == {"alive"}

    run(test)


def test_api_keys_are_stored_hashed_and_rate_limited(run) -> None:
    async def test(store: JobStore) -> None:
        key_id = await auth.add_key(store.redis, "sk-secret-value", "test")
        stored = await store.redis.hgetall(keys.API_KEYS)
        assert "sk-secret-value" not in str(stored)
        assert await auth.principal_of(store.redis, "sk-secret-value") == auth.Principal(key_id, "test", admin=False)
        assert await auth.principal_of(store.redis, "sk-wrong") is None
        results = [await auth.over_limit(store.redis, key_id, per_minute=3) for _ in range(4)]
        assert results[:3] == [None, None, None]
        assert 1 <= results[3] <= 61

    run(test)


def test_a_refused_lease_renewal_stops_the_job_but_not_the_worker(run, redis_server) -> None:
    """The race CI hit: the job's final write drops the lease while its clean-up still runs; the
    renewal is then refused and the job task cancelled. The worker must carry on, not die."""
    from runtime.batch.job_loop import Worker
    from runtime.batch.settings import BatchSettings

    class JobThatFinishesThenCleansUp(Worker):
        async def process(self, lease) -> None:
            await self.store.forget(lease)  # as finish does: the lease is gone
            await asyncio.Event().wait()  # clean-up still running when the renewal comes

    async def test(store: JobStore) -> None:
        await add_job(store, "b1")
        lease = await store.claim(30)
        settings = BatchSettings(
            redis_url=redis_server.url, s3_endpoint_url="http://127.0.0.1:1", s3_bucket="unused",
            s3_access_key_id="x", s3_secret_access_key="x", model="m", bootstrap_api_key="k", webhook_secret="s",
            lease_seconds=0.3,
        )  # fmt: skip
        worker = JobThatFinishesThenCleansUp(settings, engine=None, client=store.redis, objects=None)
        await asyncio.wait_for(worker.run_leased(lease), timeout=10)  # returns; CancelledError would escape

    run(test)


def test_keys_are_listed_without_their_secret_and_revoked_by_id(run) -> None:
    async def test(store: JobStore) -> None:
        alice = await auth.add_key(store.redis, "sk-alice-secret", "alice")
        root = await auth.add_key(store.redis, "sk-root-secret", "root", admin=True)
        listed = await auth.list_keys(store.redis)
        assert {(k.key_id, k.name, k.admin) for k in listed} == {(alice, "alice", False), (root, "root", True)}
        assert "secret" not in repr(listed)
        with pytest.raises(ValueError, match="expected the 16-character id"):
            await auth.revoke(store.redis, alice[:8])  # a prefix could name two keys
        assert await auth.revoke(store.redis, alice)
        assert not await auth.revoke(store.redis, alice)
        assert await auth.principal_of(store.redis, "sk-alice-secret") is None
        assert (await auth.principal_of(store.redis, "sk-root-secret")).admin

    run(test)


def test_a_webhook_to_a_refused_address_is_dropped_at_delivery_not_sent(run) -> None:
    """The API refuses such URLs at creation; the sender checks again at each attempt (DNS can change)."""
    received: list[bytes] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *_args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/hook"

    async def test(store: JobStore) -> None:
        batch = Batch(id="b1", endpoint="/v1/chat/completions", input_file_id="f", status="completed", created_at=1)
        refusing = webhooks.WebhookSender(store.redis, "s", max_attempts=5, policy=UrlPolicy())
        await webhooks.enqueue(store.redis, url, batch, None)
        assert await refusing.deliver_due() == 1
        assert await store.redis.zcard(keys.WEBHOOKS) == 0  # dropped, not retried
        await refusing.close()
        allowing = webhooks.WebhookSender(store.redis, "s", max_attempts=5, policy=UrlPolicy(("127.0.0.1",)))
        await webhooks.enqueue(store.redis, url, batch, None)
        assert await allowing.deliver_due() == 1
        await allowing.close()

    try:
        run(test)
    finally:
        server.shutdown()
        server.server_close()
    assert len(received) == 1  # only the allowlisted sender's delivery arrived


def test_a_job_cancelled_mid_chunk_gives_back_every_permit_of_the_worker(run, redis_server) -> None:
    """The window and open-chunk permits outlive a job: one lost to a cancellation would be lost for good,
    and after a few such leases the worker would stall on its next job."""
    from runtime.batch.chunk_pipeline import ChunkPipeline
    from runtime.batch.engines import Outcome
    from runtime.batch.settings import BatchSettings
    from runtime.batch.validation import RequestLine

    class Hanging:
        endpoints = ("/v1/chat/completions",)

        async def run(self, request: RequestLine) -> Outcome:
            await asyncio.Event().wait()  # never answers: the window fills up
            raise AssertionError("unreachable")

    class ChunksFromMemory(ChunkPipeline):
        async def _load_chunk(self, batch_id: str, index: int) -> list[RequestLine]:
            return [
                RequestLine(line=i, custom_id=f"{index}-{i}", url="/v1/chat/completions", body={}) for i in range(4)
            ]

    async def test(store: JobStore) -> None:
        settings = BatchSettings(
            redis_url=redis_server.url, s3_endpoint_url="http://127.0.0.1:1", s3_bucket="unused",
            s3_access_key_id="x", s3_secret_access_key="x", model="m", bootstrap_api_key="k", webhook_secret="s",
            concurrency=3, chunk_size=4, commits_in_flight=1,
        )  # fmt: skip
        pipeline = ChunksFromMemory(settings, engine=Hanging(), store=store, objects=None)
        chunks = pipeline.open_chunks._value
        plan = JobPlan(
            batch_id="b1", model="m", priority=Priority.NORMAL, chunks=5, chunk_size=4, valid_requests=20,
            invalid_lines=0, key_id="k",
        )  # fmt: skip
        batch = Batch(id="b1", endpoint="/v1/chat/completions", input_file_id="f", status="in_progress", created_at=0)
        job = asyncio.create_task(pipeline.run_chunks(Lease("b1", 1, 1), plan, batch))
        while pipeline.window.used < pipeline.window.size:  # until the window is full: the loop then waits for a slot
            await asyncio.sleep(0.01)
        job.cancel()
        with pytest.raises(asyncio.CancelledError):
            await job
        assert (pipeline.window.used, pipeline.open_chunks._value) == (0, chunks)

    run(test)


def test_create_is_idempotent_and_a_second_create_changes_nothing(run) -> None:
    """A retried submission (the API's request replayed) must not reset a job that has started."""

    async def test(store: JobStore) -> None:
        await add_job(store, "b1")
        first_score = await store.redis.zscore(keys.QUEUE, "b1")
        first_created = await store.redis.zscore(keys.BATCHES, "b1")
        lease = await store.claim(30)
        await store.commit_chunk(lease, ChunkCheckpoint(index=0, output_key="o", error_key="e", completed=7, failed=1))
        await store.update("b1", lambda b: b.model_copy(update={"status": BatchStatus.IN_PROGRESS}))
        await asyncio.sleep(0.002)  # a later millisecond: a second write would show
        now = int(time.time())
        again = Batch(id="b1", endpoint="/v1/completions", input_file_id="g", status="validating", created_at=now)
        plan = JobPlan(batch_id="b1", model="other", priority=Priority.HIGH, chunks=9, chunk_size=1,
                       valid_requests=9, invalid_lines=5, key_id="k")  # fmt: skip
        await store.create(again, plan, retention_seconds=RETENTION_S)
        batch = await store.get("b1")
        assert (batch.status, batch.endpoint, batch.input_file_id) == (
            BatchStatus.IN_PROGRESS,
            "/v1/chat/completions",
            "f",
        )
        assert (batch.request_counts.completed, batch.request_counts.failed) == (7, 1)
        assert (await store.plan("b1")).model == "m"
        assert await store.redis.zscore(keys.BATCHES, "b1") == first_created
        assert await store.redis.zscore(keys.ACTIVE, "b1") == first_created
        assert await store.redis.zscore(keys.owner_batches("k"), "b1") == first_created
        assert first_score is not None and await store.redis.zscore(keys.QUEUE, "b1") is None  # leased, not requeued

    run(test)


def test_a_new_job_counts_its_invalid_lines_as_failed_from_the_start(run) -> None:
    async def test(store: JobStore) -> None:
        now = int(time.time())
        batch = Batch(id="b1", endpoint="/v1/chat/completions", input_file_id="f", status="validating", created_at=now)
        plan = JobPlan(batch_id="b1", model="m", priority=Priority.NORMAL, chunks=1, chunk_size=10,
                       valid_requests=10, invalid_lines=3, key_id="k")  # fmt: skip
        await store.create(batch, plan, retention_seconds=RETENTION_S)
        assert await store.redis.hget(keys.job("b1"), "completed") == "0"
        assert await store.redis.hget(keys.job("b1"), "failed") == "3"
        counts = (await store.get("b1")).request_counts
        assert (counts.completed, counts.failed) == (0, 3)

    run(test)


def test_the_wake_list_holds_at_most_a_hundred_tokens(run) -> None:
    async def test(store: JobStore) -> None:
        for i in range(105):
            await add_job(store, f"b{i}")
        tokens = await store.redis.lrange(keys.WAKE, 0, -1)
        assert tokens == [f"b{i}" for i in range(5, 105)]  # the newest hundred

    run(test)


def test_a_cancelled_job_records_when_and_keeps_its_records_for_the_retention(run) -> None:
    async def test(store: JobStore) -> None:
        await add_job(store, "running")
        await asyncio.sleep(0.002)
        await add_job(store, "queued")
        lease = await store.claim(30)
        await store.commit_chunk(lease, ChunkCheckpoint(index=0, output_key="o", error_key="e", completed=2, failed=0))
        before = int(time.time())
        cancelling = await store.cancel("running", retention_seconds=60)
        assert cancelling.cancelling_at >= before and cancelling.cancelled_at is None
        stored = await store.get("running")
        assert stored.status == BatchStatus.CANCELLING and stored.cancelling_at == cancelling.cancelling_at
        assert await store.redis.ttl(keys.batch("running")) > 60  # its TTL kept, not the cancel's
        assert await store.redis.hlen(keys.chunks("running")) == 1  # the finished chunk stays for the output
        again = await store.cancel("running", retention_seconds=60)
        assert again.cancelling_at == cancelling.cancelling_at  # a second cancel changes nothing

        cancelled = await store.cancel("queued", retention_seconds=60)
        assert cancelled.cancelling_at == cancelled.cancelled_at >= before
        assert 0 < await store.redis.ttl(keys.batch("queued")) <= 60
        assert 0 < await store.redis.ttl(keys.plan("queued")) <= 60
        assert (await store.get("queued")).cancelled_at == cancelled.cancelled_at
        assert await store.cancel("unknown", retention_seconds=60) is None

    run(test)


def test_forget_drops_a_job_with_nothing_left_to_do_and_only_that_one(run) -> None:
    async def test(store: JobStore) -> None:
        await add_job(store, "b1")
        await add_job(store, "b2")
        first, second = await store.claim(30), await store.claim(30)
        await store.commit_chunk(first, ChunkCheckpoint(index=0, output_key="o", error_key="e", completed=1, failed=0))
        await store.commit_chunk(second, ChunkCheckpoint(index=0, output_key="o", error_key="e", completed=1, failed=0))
        await store.forget(first)
        b1, b2 = first.batch_id, second.batch_id
        assert await store.redis.zscore(keys.LEASES, b1) is None and await store.redis.zscore(keys.ACTIVE, b1) is None
        assert not await store.redis.exists(keys.job(b1), keys.chunks(b1))
        assert await store.redis.zscore(keys.LEASES, b2) is not None and await store.redis.zscore(keys.ACTIVE, b2)
        assert await store.redis.exists(keys.job(b2), keys.chunks(b2)) == 2

    run(test)


def test_files_are_listed_by_owner_and_purpose_in_pages_and_deleted_by_their_owner(run) -> None:
    async def test(store: JobStore) -> None:
        for i, (owner, purpose) in enumerate([("alice", "batch"), ("bob", "batch"), ("alice", "batch_output"),
                                              ("alice", "batch"), ("alice", "batch")]):  # fmt: skip
            await store.record_file(f"f{i}", owner=owner, size=i, filename=f"{i}.jsonl", purpose=purpose,
                                    retention_seconds=3600)  # fmt: skip
            await asyncio.sleep(0.002)  # distinct creation milliseconds: the listing's order
        record = await store.get_file("f1")
        assert (record.owner, record.bytes, record.filename, record.purpose) == ("bob", 1, "1.jsonl", "batch")
        assert record.expires_at - record.created_at == 3600
        assert 0 < await store.redis.ttl(keys.file("f1")) <= 3600

        async def ids(**query) -> tuple[list[str], bool]:
            files, more = await store.list_files(**{"owner": "alice", "purpose": None, "after": None, **query})
            return [f.id for f in files], more

        assert await ids(limit=10, newest_first=False) == (["f0", "f2", "f3", "f4"], False)
        assert await ids(limit=2, newest_first=True) == (["f4", "f3"], True)
        assert await ids(limit=2, newest_first=True, after="f3") == (["f2", "f0"], False)
        assert await ids(limit=2, newest_first=False, purpose="batch") == (["f0", "f3"], True)
        assert await ids(limit=10, newest_first=False, after="gone") == ([], False)
        assert await ids(limit=10, newest_first=False, owner=None) == (["f0", "f1", "f2", "f3", "f4"], False)

        assert await store.delete_file("f0", "alice") is True
        assert await store.get_file("f0") is None and await store.delete_file("f0", "alice") is False
        assert await store.redis.zscore(keys.FILES, "f0") is None
        assert await store.redis.zscore(keys.owner_files("alice"), "f0") is None
        await store.redis.delete(keys.file("f3"))  # a record past its expiry: its id is pruned on read
        assert await ids(limit=10, newest_first=False) == (["f2", "f4"], False)
        assert await store.redis.zscore(keys.owner_files("alice"), "f3") is None

    run(test)


def test_batches_are_listed_newest_first_per_owner_with_their_plan_and_progress(run) -> None:
    async def test(store: JobStore) -> None:
        for i in range(4):
            await add_job(store, f"b{i}")
            await asyncio.sleep(0.002)
        other = Batch(id="x", endpoint="/v1/chat/completions", input_file_id="f", status="validating",
                      created_at=int(time.time()))  # fmt: skip
        await store.create(other, JobPlan(batch_id="x", model="m", priority=Priority.NORMAL, chunks=1, chunk_size=1,
                                          valid_requests=1, invalid_lines=0, key_id="other"),
                           retention_seconds=RETENTION_S)  # fmt: skip

        async def ids(**query) -> tuple[list[str], bool]:
            batches, more = await store.list_batches(**{"after": None, "owner": "k", **query})
            return [b.id for b in batches], more

        assert await ids(limit=2) == (["b3", "b2"], True)
        assert await ids(limit=2, after="b2") == (["b1", "b0"], False)
        assert await ids(limit=10, after="unknown") == ([], False)
        assert (await ids(limit=10, owner=None))[0] == ["x", "b3", "b2", "b1", "b0"]
        assert (await store.owner("b1"), await store.owner("x"), await store.owner("unknown")) == ("k", "other", None)
        assert (await store.plan("b1")).key_id == "k"
        with pytest.raises(KeyError, match="batch unknown has no plan"):
            await store.plan("unknown")

        lease = await store.claim(30)
        assert await store.progress_at(lease.batch_id) is None
        before = time.time()
        await store.commit_chunk(lease, ChunkCheckpoint(index=0, output_key="o", error_key="e", completed=3, failed=2))
        assert before - 1 <= await store.progress_at(lease.batch_id) <= time.time() + 1
        running = await store.get(lease.batch_id)
        assert (running.request_counts.completed, running.request_counts.failed) == (3, 2)  # from the totals
        await store.redis.delete(keys.batch("b1"))  # a record past its retention
        assert await ids(limit=10) == (["b3", "b2", "b0"], False)
        assert await store.redis.zscore(keys.owner_batches("k"), "b1") is None  # pruned on read

    run(test)


def test_an_update_under_a_stale_fence_writes_nothing(run) -> None:
    async def test(store: JobStore) -> None:
        await add_job(store, "b1")
        lease = await store.claim(30)
        ttl_before = await store.redis.ttl(keys.batch("b1"))
        started = await store.update(
            "b1", lambda b: b.model_copy(update={"status": BatchStatus.IN_PROGRESS}), fence=lease.fence
        )
        assert started.status == BatchStatus.IN_PROGRESS == (await store.get("b1")).status
        assert ttl_before - 2 <= await store.redis.ttl(keys.batch("b1")) <= ttl_before  # its expiry kept
        with pytest.raises(StaleLeaseError):
            await store.update("b1", lambda b: b.model_copy(update={"status": BatchStatus.FAILED}),
                               fence=lease.fence + 1)  # fmt: skip
        assert (await store.get("b1")).status == BatchStatus.IN_PROGRESS
        with pytest.raises(KeyError, match="batch nope not found"):
            await store.update("nope", lambda b: b)

    run(test)


def test_fleet_figures_throughput_and_live_workers(run) -> None:
    async def test(store: JobStore) -> None:
        assert await store.throughput() is None
        await store.record_throughput(123.4567)
        assert await store.throughput() == 123.457
        assert 0 < await store.redis.ttl(keys.THROUGHPUT) <= 3600
        await store.heartbeat("w1")
        await store.redis.hset(keys.WORKERS, "w2", int(time.time() * 1000) - 120_000)  # silent two minutes
        assert await store.live_workers(60) == ["w1"]
        assert sorted(await store.live_workers(600)) == ["w1", "w2"]

    run(test)
