"""Redis backups to S3 and their restore (issue 17, item 10), against a real redis-server and moto's S3.

A snapshot taken while jobs exist, Redis emptied (as a lost volume would leave it), the documented
restore command run: every key is back with its value and its absolute expiry.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis as sync_redis

from harness.servers import ROOT, BatchWorker, RedisServer, S3Server, batch_env, wait_for
from runtime.batch import backup
from runtime.batch.storage import ObjectStore
from tests.integration.batch_fixtures import run_private, settings_of

pytestmark = pytest.mark.integration
ADMIN_URL = "TEST_REDIS_ADMIN_URL"


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory, s3_server: S3Server) -> Iterator[tuple[RedisServer, S3Server]]:
    redis_server = RedisServer(tmp_path_factory.mktemp("backup"))
    redis_server.start()
    yield redis_server, s3_server
    redis_server.stop()


@pytest.fixture
def env(servers: tuple[RedisServer, S3Server], request: pytest.FixtureRequest) -> dict[str, str]:
    redis_server, s3 = servers
    sync_redis.Redis.from_url(redis_server.admin_url).flushall()
    bucket = "backup-" + request.node.name.replace("_", "-")[:40].strip("-").lower()
    # The services' Redis user may not flush: the tests lose "the volume" as the operator (wipe).
    return {**batch_env(redis_server, s3, s3_bucket=bucket, backup_keep="2"), ADMIN_URL: redis_server.admin_url}


def wipe(env: dict[str, str]) -> None:
    """Redis loses its data (the volume is gone), done as its default user."""
    sync_redis.Redis.from_url(env[ADMIN_URL]).flushall()


def objects_of(env: dict[str, str]) -> ObjectStore:
    objects = ObjectStore(settings_of(env))
    objects.ensure_bucket()
    return objects


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """The documented command, as an operator runs it where the BATCH_* variables are set."""
    return subprocess.run(
        [sys.executable, "-m", "runtime.batch.backup", *args],
        cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def seed(client: sync_redis.Redis) -> dict[bytes, tuple[bytes, int]]:
    """Keys of every type the service writes, some expiring; returns key -> (DUMP, PEXPIRETIME)."""
    client.set("vgb:batch:b1", '{"id": "b1"}', exat=int(time.time()) + 3600)
    client.hset("vgb:batch:b1:job", mapping={"fence": 3, "attempts": 1, "score": 10**13})
    client.hset("vgb:batch:b1:chunks", "0", '{"index": 0}')
    client.zadd("vgb:queue", {"b2": 1.5, "b3": 2.5})
    client.rpush("vgb:wake", "b2", "b3")
    client.set("vgb:bin\x00key", b"\xff\xfe\x00binary")
    return {k: (client.dump(k), client.pexpiretime(k)) for k in client.scan_iter()}


def test_a_snapshot_restored_into_an_empty_redis_brings_back_every_key_and_expiry(env: dict[str, str]) -> None:
    objects_of(env)
    client = sync_redis.Redis.from_url(env["BATCH_REDIS_URL"])
    seed(client)
    taken = cli(env, "snapshot")
    assert taken.returncode == 0, taken.stderr
    before = {k: (client.dump(k), client.pexpiretime(k)) for k in client.scan_iter()}  # and the marker
    assert f"{len(before)} keys" in taken.stdout
    client.set("vgb:written-after", "x")  # a key the snapshot does not have
    wipe(env)  # the volume is lost
    restored = cli(env, "restore")
    assert restored.returncode == 0, restored.stderr
    assert f"restored {len(before)} keys" in restored.stdout
    after = {k: (client.dump(k), client.pexpiretime(k)) for k in client.scan_iter()}
    assert after == before  # same values, same absolute expiries (ABSTTL), nothing more
    assert client.get("vgb:written-after") is None


def test_restore_refuses_a_redis_that_holds_keys_unless_told_to_replace(env: dict[str, str]) -> None:
    objects_of(env)
    client = sync_redis.Redis.from_url(env["BATCH_REDIS_URL"])
    seed(client)
    assert cli(env, "snapshot").returncode == 0
    client.set("vgb:batch:b1", "changed since")
    refused = cli(env, "restore")
    assert refused.returncode == 1 and "needs --replace" in refused.stderr
    assert client.get("vgb:batch:b1") == b"changed since"  # nothing was touched
    replaced = cli(env, "restore", "--replace")
    assert replaced.returncode == 0, replaced.stderr
    assert client.get("vgb:batch:b1") == b'{"id": "b1"}'


def test_only_the_newest_snapshots_are_kept(env: dict[str, str]) -> None:
    sync_redis.Redis.from_url(env["BATCH_REDIS_URL"]).set("vgb:lasting", "1")
    objects = objects_of(env)
    for _ in range(3):
        assert cli(env, "snapshot").returncode == 0
    assert len(backup.list_snapshots(objects)) == 2  # BATCH_BACKUP_KEEP=2: the oldest was deleted


def test_keys_past_their_expiry_when_restored_are_skipped(env: dict[str, str]) -> None:
    async def scenario() -> tuple[tuple[int, int], bool, bool]:
        client = backup.raw_client(settings_of(env))
        try:
            await client.set("vgb:lasting", "1")
            await client.set("vgb:short-lived", "1", px=300)
            out = io.BytesIO()
            await backup.write_snapshot(client, out)
            while await client.exists("vgb:short-lived"):  # its absolute expiry passes before the restore
                await asyncio.sleep(0.05)
            wipe(env)
            out.seek(0)
            counts = await backup.read_snapshot(client, out, replace=False)
            return counts, bool(await client.exists("vgb:lasting")), bool(await client.exists("vgb:short-lived"))
        finally:
            await client.aclose()

    assert run_private(scenario()) == ((1, 1), True, False)


@pytest.mark.parametrize(
    ("second_line", "message"),
    [
        (b"not json", "snapshot line 2: not a backup row"),
        (b'{"key": "dmdiOmE=", "expire_ms": -1, "dump": "AAAA"}', "snapshot line 2: key b'vgb:a': Redis refused it"),
    ],
)
def test_a_damaged_snapshot_is_named_with_its_line(env: dict[str, str], second_line: bytes, message: str) -> None:
    objects = objects_of(env)
    client = sync_redis.Redis.from_url(env["BATCH_REDIS_URL"])
    client.set("vgb:good", "1")
    dumped = base64.b64encode(client.dump("vgb:good")).decode()
    good = json.dumps({"key": "dmdiOmdvb2Q=", "expire_ms": -1, "dump": dumped})
    wipe(env)
    damaged = gzip.compress(good.encode() + b"\n" + second_line + b"\n")
    objects.put(f"{backup.BACKUP_PREFIX}20261204T000000Z-000000000.jsonl.gz", damaged)
    failed = cli(env, "restore")
    assert failed.returncode == 1 and message in failed.stderr, failed.stderr


def test_no_snapshot_yet_is_a_clear_error(env: dict[str, str]) -> None:
    objects_of(env)
    failed = cli(env, "restore")
    assert failed.returncode == 1 and "no snapshot under s3://" in failed.stderr


def test_a_worker_takes_the_scheduled_snapshot(env: dict[str, str], tmp_path: Path) -> None:
    objects = objects_of(env)
    sync_redis.Redis.from_url(env["BATCH_REDIS_URL"]).set("vgb:seeded-before", "1")
    worker = BatchWorker(
        tmp_path, {**env, "BATCH_BACKUP_INTERVAL_SECONDS": "1"}, engine_factory="bench.batch_engines:instant"
    )
    worker.start()
    try:
        wait_for(lambda: len(backup.list_snapshots(objects)) >= 2, 60, "two scheduled snapshots")
    finally:
        worker.stop()
    newest = backup.list_snapshots(objects)[0]
    keys = {base64.b64decode(json.loads(row)["key"]) for row in gzip.decompress(objects.get(newest)).splitlines()}
    assert {b"vgb:seeded-before", backup.MARKER.encode()} <= keys


def test_after_redis_lost_its_data_no_scheduled_snapshot_replaces_the_good_ones(env: dict[str, str]) -> None:
    objects = objects_of(env)
    client = sync_redis.Redis.from_url(env["BATCH_REDIS_URL"])
    seed(client)
    assert cli(env, "snapshot").returncode == 0
    good = backup.list_snapshots(objects)
    wipe(env)  # the volume is lost; workers keep running

    async def scheduled() -> object:
        redis_client = backup.raw_client(settings_of(env))
        try:
            return await backup.take_if_due(
                settings_of({**env, "BATCH_BACKUP_INTERVAL_SECONDS": "1"}), objects, redis_client
            )
        finally:
            await redis_client.aclose()

    assert run_private(scheduled()) is None
    assert backup.list_snapshots(objects) == good  # the newest is still the good one
    assert cli(env, "restore", "--replace").returncode == 0  # the schedule's lock is in Redis now
    assert client.exists(backup.MARKER)  # restored: scheduled snapshots resume


def test_a_restore_requeues_a_job_caught_between_sets_and_fences_out_old_workers(env: dict[str, str]) -> None:
    objects_of(env)
    client = sync_redis.Redis.from_url(env["BATCH_REDIS_URL"])
    # as SCAN can capture it: the job left the queue (claimed) but its lease was read before it was added
    client.zadd("vgb:active", {"b9": 1})
    client.hset("vgb:batch:b9:job", mapping={"score": 42, "fence": 3, "completed": 5, "failed": 0})
    client.set("vgb:batch:b9:plan", json.dumps({"invalid_lines": 2}))
    client.hset("vgb:batch:b9:chunks", mapping={"0": json.dumps({"completed": 9, "failed": 1})})
    assert cli(env, "snapshot").returncode == 0
    wipe(env)
    assert cli(env, "restore").returncode == 0
    assert client.zscore("vgb:queue", "b9") == 42  # queued again, at its place
    job = client.hgetall("vgb:batch:b9:job")
    assert int(job[b"fence"]) == 3 + backup.FENCE_JUMP  # a worker that kept fence 3 writes nothing now
    assert (int(job[b"completed"]), int(job[b"failed"])) == (9, 1 + 2)  # from the checkpoints and bad lines


def test_snapshot_reads_every_row_back(env: dict[str, str]) -> None:
    """write_snapshot and read_snapshot agree on the format, without S3 in between."""

    async def roundtrip() -> tuple[int, tuple[int, int]]:
        client = backup.raw_client(settings_of(env))
        try:
            await client.set("vgb:k", "v")
            out = io.BytesIO()
            count = await backup.write_snapshot(client, out)
            wipe(env)
            out.seek(0)
            return count, await backup.read_snapshot(client, out, replace=False)
        finally:
            await client.aclose()

    assert run_private(roundtrip()) == (1, (1, 0))
