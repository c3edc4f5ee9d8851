"""Expiry that happens whatever the S3 server does (issue 37, item 2): the worker's sweep against a real
redis-server and moto's S3 server, with a clock the test moves (nothing sleeps, no lifecycle rule runs).

Files and outputs past their expires_after / output_expires_after disappear (object, API, lists), nothing
else does (a file not yet expired, another tenant's file, objects outside files/ and batches/); whatever
is older than the retention goes; the metrics follow; a sweep stopped midway loses nothing and a sweep
run again finishes the job; one worker sweeps at a time; DeleteObjects and each sweep are bounded.
"""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import redis as sync_redis
from botocore.exceptions import ClientError

from harness.metrics import sample_value
from harness.servers import BatchApi, BatchWorker, RedisServer, S3Server, batch_env, wait_for
from runtime.batch import keys, metrics, redis_client
from runtime.batch.expiry import ExpirySweeper, SweepReport
from runtime.batch.jobs import JobStore
from runtime.batch.storage import ObjectStore, file_key
from tests.integration.batch_fixtures import chat_lines, run_private, settings_of, tenant_keys

pytestmark = pytest.mark.integration
HOUR = 3600
RETENTION = 7 * 86_400  # resultRetentionDays' default


class Clock:
    """Epoch seconds that only the test moves."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def exists(objects: ObjectStore, key: str) -> bool:
    try:
        objects.client.head_object(Bucket=objects.bucket, Key=key)
    except ClientError as exc:
        if exc.response["Error"]["Code"] in ("404", "NoSuchKey", "NotFound"):
            return False
        raise
    return True


def counted(name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def sweep(objects: ObjectStore, env: dict[str, str], clock: Clock, **overrides: Any) -> SweepReport:
    """One sweep in a fresh loop and client, as a worker (or a worker started again) runs it."""
    settings = settings_of(env).model_copy(update=overrides)

    async def body() -> SweepReport:
        client = redis_client.connect(env["BATCH_REDIS_URL"], outage_seconds=5)
        try:  # bounded: a sweep that spins is a failure, not a hung suite
            return await asyncio.wait_for(ExpirySweeper(settings, objects, client, clock=clock).sweep(), 60)
        finally:
            await client.aclose()

    return run_private(body())


# --- the sweep alone: its own Redis and a bucket per test ------------------------------------


@pytest.fixture(scope="module")
def own_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("expiry-redis"))
    server.start()
    yield server
    server.stop()


@dataclass
class Bare:
    env: dict[str, str]
    objects: ObjectStore
    clock: Clock

    def sweep(self, **overrides: Any) -> SweepReport:
        return sweep(self.objects, self.env, self.clock, **overrides)

    def record(self, file_id: str, *, owner: str = "alice", keep_seconds: int = HOUR, data: bytes = b"{}\n") -> None:
        """A file as the API makes one: its object, then its record (and expiry entry)."""
        self.objects.put(file_key(file_id), data)

        async def body() -> None:
            client = redis_client.connect(self.env["BATCH_REDIS_URL"], outage_seconds=5)
            try:
                await JobStore(client).record_file(
                    file_id, owner=owner, size=len(data), filename="f.jsonl", purpose="batch",
                    retention_seconds=keep_seconds,
                )  # fmt: skip
            finally:
                await client.aclose()

        run_private(body())

    def redis(self) -> sync_redis.Redis:
        return sync_redis.Redis.from_url(self.env["BATCH_REDIS_URL"], decode_responses=True)


@pytest.fixture
def bare(own_redis: RedisServer, s3_server: S3Server, request: pytest.FixtureRequest) -> Bare:
    sync_redis.Redis.from_url(own_redis.admin_url).flushall()
    bucket = "expiry-" + request.node.name.replace("_", "-")[5:45].strip("-").lower()
    env = batch_env(own_redis, s3_server, s3_bucket=bucket)
    objects = ObjectStore(settings_of(env))
    objects.ensure_bucket()
    return Bare(env, objects, Clock())


def test_a_sweep_stopped_after_its_first_delete_batch_loses_nothing_and_a_second_finishes(bare: Bare) -> None:
    expiring = [f"file-exp{i}" for i in range(7)]
    lasting = [f"file-last{i}" for i in range(3)]
    for file_id in expiring:
        bare.record(file_id, keep_seconds=HOUR)
    for file_id in lasting:
        bare.record(file_id, keep_seconds=3 * HOUR)
    bare.clock.now += 2 * HOUR
    calls: list[list[str]] = []
    real = bare.objects.client.delete_objects

    def fails_after_the_first(**request: Any) -> Any:  # the process dies before its second DeleteObjects
        calls.append([o["Key"] for o in request["Delete"]["Objects"]])
        if len(calls) > 1:
            raise RuntimeError("killed mid-sweep")
        return real(**request)

    bare.objects.client.delete_objects = fails_after_the_first  # type: ignore[method-assign]
    errors = counted("batch_expiry_errors_total", stage="sweep")
    deleted = counted("batch_expiry_deleted_objects_total", reason="expires_after")
    with pytest.raises(RuntimeError, match="killed mid-sweep"):
        bare.sweep(expiry_delete_batch=3)
    assert counted("batch_expiry_errors_total", stage="sweep") == errors + 1
    first = calls[0]
    assert len(first) == 3 and set(first) <= {file_key(i) for i in expiring}
    store = bare.redis()
    left_in_index = set(store.zrange(keys.EXPIRY, 0, -1))
    assert left_in_index == {file_key(i) for i in expiring + lasting} - set(first)  # deleted, then unlisted
    for file_id in expiring:
        gone = file_key(file_id) in first
        assert exists(bare.objects, file_key(file_id)) is not gone, file_id
    retired = [i for i in expiring if file_key(i) in calls[1]]  # records gone before their objects: never the reverse
    assert retired and all(store.get(keys.file(i)) is None for i in retired)
    for file_id in lasting:  # not expired: untouched
        assert exists(bare.objects, file_key(file_id)) and store.get(keys.file(file_id)) is not None

    bare.objects.client.delete_objects = real  # type: ignore[method-assign]  # the worker started again
    report = bare.sweep(expiry_delete_batch=3)
    assert report.deleted["expires_after"] == 4
    assert counted("batch_expiry_deleted_objects_total", reason="expires_after") == deleted + 7
    assert not any(exists(bare.objects, file_key(i)) for i in expiring)
    assert all(store.get(keys.file(i)) is None for i in expiring)
    assert set(store.zrange(keys.EXPIRY, 0, -1)) == {file_key(i) for i in lasting}
    assert all(exists(bare.objects, file_key(i)) and store.get(keys.file(i)) for i in lasting)
    assert store.zrange(keys.owner_files("alice"), 0, -1) == lasting  # the owner's list without them


def test_an_index_entry_earlier_than_its_record_keeps_the_object_and_moves_to_the_records_expiry(bare: Bare) -> None:
    """The record decides: an entry that says "due" while its record is valid for hours (written by hand, a
    restore that mixed snapshots) deletes nothing, and the sweep ends instead of reading it again forever."""
    bare.record("file-valid", keep_seconds=3 * HOUR)
    store = bare.redis()
    expires_at = store.zscore(keys.EXPIRY, file_key("file-valid"))
    store.zadd(keys.EXPIRY, {file_key("file-valid"): bare.clock.now - 60})
    report = bare.sweep()
    assert report.deleted == {"expires_after": 0, "retention": 0}
    assert exists(bare.objects, file_key("file-valid")) and store.get(keys.file("file-valid"))
    assert store.zscore(keys.EXPIRY, file_key("file-valid")) == expires_at


def test_delete_batches_and_each_sweep_are_bounded(bare: Bare) -> None:
    for i in range(12):
        bare.record(f"file-b{i:02d}", keep_seconds=HOUR)
    bare.clock.now += 2 * HOUR
    sizes: list[int] = []
    real = bare.objects.client.delete_objects

    def counting(**request: Any) -> Any:
        sizes.append(len(request["Delete"]["Objects"]))
        return real(**request)

    bare.objects.client.delete_objects = counting  # type: ignore[method-assign]
    done = [bare.sweep(expiry_delete_batch=2, expiry_sweep_max_deletes=5).deleted["expires_after"] for _ in range(3)]
    assert done == [5, 5, 2]
    assert max(sizes) <= 2 and sum(sizes) == 12
    assert bare.redis().zcard(keys.EXPIRY) == 0


def test_the_listing_deletes_what_is_older_than_the_retention_under_its_prefixes_only(bare: Bare) -> None:
    """Objects no record names (an upload whose record was never written, a job's chunks left behind) go
    once older than the retention, not before; other prefixes are only counted; a listing bigger than a
    sweep's share resumes where the last sweep stopped, and its end publishes the overdue gauge."""
    orphans = ["files/file-orphan", "batches/batch_x/in/000000.jsonl", "batches/batch_x/out/000000-1.jsonl"]
    others = ["backups/redis/20261201T000000Z-1.jsonl.gz", "elsewhere/keep.txt"]
    for key in orphans + others:
        bare.objects.put(key, b"12345")
    bare.record("file-young", keep_seconds=RETENTION)  # with its record, still valid
    before = counted("batch_expiry_deleted_objects_total", reason="retention")
    bytes_before = counted("batch_expiry_deleted_bytes_total")

    bare.clock.now += RETENTION - 60
    report = bare.sweep()
    assert report.listing_complete and report.deleted == {"expires_after": 0, "retention": 0}
    assert all(exists(bare.objects, k) for k in orphans + others + ["files/file-young"])
    assert counted("batch_expiry_overdue_age_seconds", prefix="other") == 0

    bare.clock.now += 120  # now past the retention; the young file's own expiry too (its entry goes)
    reports = [bare.sweep(expiry_sweep_max_listed=2) for _ in range(3)]
    assert [r.listing_complete for r in reports] == [False, False, True]
    assert not any(exists(bare.objects, k) for k in [*orphans, "files/file-young"])
    assert all(exists(bare.objects, k) for k in others)
    assert counted("batch_expiry_deleted_objects_total", reason="retention") - before == len(orphans)
    assert counted("batch_expiry_deleted_bytes_total") - bytes_before == 5 * len(orphans) + 3  # "{}\n": 3 bytes
    assert counted("batch_expiry_overdue_age_seconds", prefix="other") > RETENTION  # left: the lifecycle's
    assert counted("batch_expiry_overdue_age_seconds", prefix="files") == 0
    assert counted("batch_expiry_overdue_age_seconds", prefix="batches") == 0
    assert counted("batch_expiry_pass_timestamp_seconds") == pytest.approx(bare.clock.now)


def test_the_overdue_gauge_shows_what_a_sweep_left_and_clears_when_it_is_gone(bare: Bare) -> None:
    for i in range(4):
        bare.objects.put(f"batches/batch_y/in/{i:06d}.jsonl", b"x")
    bare.clock.now += RETENTION + HOUR
    report = bare.sweep(expiry_sweep_max_deletes=2)  # half of them this time
    assert report.listing_complete and report.deleted["retention"] == 2
    age = counted("batch_expiry_overdue_age_seconds", prefix="batches")
    assert RETENTION + HOUR - 60 < age < RETENTION + HOUR + 60
    bare.sweep(expiry_sweep_max_deletes=2)
    assert counted("batch_expiry_overdue_age_seconds", prefix="batches") == 0


def test_one_worker_of_the_fleet_sweeps_and_the_others_show_its_figures(bare: Bare) -> None:
    bare.record("file-l", keep_seconds=HOUR)
    bare.clock.now += 2 * HOUR
    settings = settings_of(bare.env)
    deletes: list[str] = []
    real = bare.objects.client.delete_objects

    def counting(**request: Any) -> Any:
        deletes.extend(o["Key"] for o in request["Delete"]["Objects"])
        return real(**request)

    bare.objects.client.delete_objects = counting  # type: ignore[method-assign]

    async def body() -> list[SweepReport | None]:
        clients = [redis_client.connect(bare.env["BATCH_REDIS_URL"], outage_seconds=5) for _ in range(3)]
        try:
            fleet = [ExpirySweeper(settings, bare.objects, c, clock=bare.clock) for c in clients]
            return list(await asyncio.gather(*(s.sweep_if_due() for s in fleet)))
        finally:
            for client in clients:
                await client.aclose()

    reports = run_private(body())
    assert sum(r is not None for r in reports) == 1
    assert deletes == ["files/file-l"]
    assert 0 < bare.redis().pttl(keys.EXPIRY_LOCK) <= settings.expiry_sweep_seconds * 1000
    assert run_private(body()) == [None, None, None]  # the interval has not passed: nobody sweeps
    assert counted("batch_expiry_pass_timestamp_seconds") == pytest.approx(bare.clock.now)


# --- through the API: real tenants, real outputs ---------------------------------------------


@dataclass
class Service:
    env: dict[str, str]
    api: BatchApi
    worker: BatchWorker
    keys: dict[str, str]
    objects: ObjectStore

    def client(self, who: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.api.url}/v1", api_key=self.keys[who], max_retries=0)


@pytest.fixture(scope="module")
def service(
    redis_server: RedisServer, s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    sync_redis.Redis.from_url(redis_server.admin_url).flushall()
    log_dir: Path = tmp_path_factory.mktemp("expiry-service")
    env = batch_env(redis_server, s3_server, s3_bucket="expiry-service", model="instant", engine="http")
    env["BATCH_VLLM_BASE_URL"] = "http://127.0.0.1:9/v1"  # never called: the worker's engine answers at once
    api = BatchApi(log_dir, env)
    worker = BatchWorker(log_dir, env, engine_factory="bench.batch_engines:instant")
    api.start()
    worker.start()
    made = tenant_keys(env, "alice", "bob")
    try:
        yield Service(env, api, worker, made, ObjectStore(settings_of(env)))
    finally:
        worker.stop()
        api.stop()


def upload(client: openai.OpenAI, lines: list[str], seconds: int | None = None) -> str:
    extra = {"expires_after[anchor]": "created_at", "expires_after[seconds]": str(seconds)} if seconds else None
    made = client.files.create(file=("in.jsonl", io.BytesIO("\n".join(lines).encode())), purpose="batch",
                               extra_body=extra)  # fmt: skip
    return made.id


def finished(client: openai.OpenAI, input_id: str, output_seconds: int | None = None) -> Any:
    extra = {"output_expires_after": {"anchor": "created_at", "seconds": output_seconds}} if output_seconds else None
    batch = client.batches.create(input_file_id=input_id, endpoint="/v1/chat/completions", completion_window="24h",
                                  extra_body=extra)  # fmt: skip
    done = wait_for(lambda: (b := client.batches.retrieve(batch.id)).status == "completed" and b, 60, batch.id, 0.1)
    assert done.output_file_id, done
    return done


def test_files_and_outputs_past_their_expiry_disappear_and_nothing_else_does(service: Service) -> None:
    alice, bob = service.client("alice"), service.client("bob")
    lines = chat_lines(3, model="instant")
    short = upload(alice, lines, seconds=HOUR)
    kept = upload(alice, lines)  # the retention (7 days)
    bobs = upload(bob, lines)  # another tenant's
    short_output = finished(alice, kept, output_seconds=HOUR).output_file_id
    kept_output = finished(alice, kept).output_file_id
    service.objects.put("elsewhere/keep.txt", b"not the sweep's")
    clock = Clock()
    gone_before = counted("batch_expiry_deleted_objects_total", reason="expires_after")

    clock.now += HOUR + 60
    sweep(service.objects, service.env, clock)
    for file_id in (short, short_output):
        assert not exists(service.objects, file_key(file_id)), file_id
        with pytest.raises(openai.NotFoundError):
            alice.files.retrieve(file_id)
        with pytest.raises(openai.NotFoundError):
            alice.files.content(file_id)
    assert counted("batch_expiry_deleted_objects_total", reason="expires_after") - gone_before == 2
    listed = {f.id for f in alice.files.list()}
    assert short not in listed and short_output not in listed and {kept, kept_output} <= listed
    with httpx.Client(base_url=service.api.url, headers={"Authorization": f"Bearer {service.keys['alice']}"}) as http:
        assert {f["id"] for f in http.get("/v1/files", params={"purpose": "batch_output"}).json()["data"]} == {
            kept_output
        }
    for file_id in (kept, kept_output):
        assert alice.files.content(file_id).content
    assert bob.files.content(bobs).content  # another tenant's file is untouched
    assert exists(service.objects, "elsewhere/keep.txt")

    clock.now += RETENTION  # now past every file's retention
    sweep(service.objects, service.env, clock)
    for client, file_id in ((alice, kept), (alice, kept_output), (bob, bobs)):
        assert not exists(service.objects, file_key(file_id))
        with pytest.raises(openai.NotFoundError):
            client.files.retrieve(file_id)
    assert {f.id for f in alice.files.list()} == set() and {f.id for f in bob.files.list()} == set()
    assert exists(service.objects, "elsewhere/keep.txt")  # outside files/ and batches/: the lifecycle rule's


def test_the_worker_sweeps_on_its_schedule_and_exports_the_figures(service: Service) -> None:
    """The worker process itself sweeps (at start, then every BATCH_EXPIRY_SWEEP_SECONDS) and says so on /metrics."""

    def scraped() -> str | None:
        text = httpx.get(f"{service.worker.url}/metrics", timeout=5).text
        value = sample_value(text, "batch_expiry_pass_timestamp_seconds")
        return text if value else None

    text = wait_for(scraped, 30, "the worker's first expiry sweep on /metrics")
    assert sample_value(text, "batch_expiry_overdue_age_seconds", prefix="files") == 0
    assert sync_redis.Redis.from_url(service.env["BATCH_REDIS_URL"]).pttl(keys.EXPIRY_LOCK) > 0


def test_a_file_whose_object_went_first_is_not_found_rather_than_a_server_error(service: Service) -> None:
    """Between the API reading a record and opening its object, the object may expire (the sweep, or a
    lifecycle rule that runs early): the caller gets OpenAI's 404 for an expired file, not a 500."""
    alice = service.client("alice")
    file_id = upload(alice, chat_lines(1, model="instant"))
    service.objects.delete(file_key(file_id))
    with pytest.raises(openai.NotFoundError):
        alice.files.content(file_id)
