"""Backups of the batch service's Redis to S3, and their restore (the seeds' disaster recovery).

    python -m runtime.batch.backup snapshot            # one now (workers also take one on a schedule)
    python -m runtime.batch.backup list                # newest first
    python -m runtime.batch.backup restore [--key K] [--replace]

Run it where the BATCH_* variables are set, e.g. `docker exec vllm-gb10-batch-worker python -m
runtime.batch.backup restore`. Redis's AOF survives a restart; a backup is for losing the volume
or the host. It is taken over the network with Redis's own serialisation (SCAN, DUMP, PEXPIRETIME),
so it needs no access to Redis's files, and restored with RESTORE … ABSTTL: each key comes back with
the expiry it had (keys already past it are skipped). A snapshot is consistent per key, not across
keys (the scan runs while jobs run). That is enough here: a restored lease that is stale runs out,
and the fences refuse a worker that held it; chunk checkpoints are written after their S3 objects.

The object is gzip'd JSON lines under backups/redis/, in the batch bucket: it expires with the
bucket's rule (resultRetentionDays), and a snapshot keeps only the newest `keep`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gzip
import json
import logging
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import IO

import redis.asyncio as redis
from botocore.exceptions import BotoCoreError, ClientError
from pydantic import ValidationError
from redis.exceptions import RedisError, ResponseError

from runtime.batch import redis_client
from runtime.batch.keys import PREFIX
from runtime.batch.s3_policies import BACKUP_PREFIX
from runtime.batch.settings import BatchSettings
from runtime.batch.storage import ObjectStore

SCHEDULE_LOCK = PREFIX + "backup:lock"  # SET NX PX: one worker of the fleet takes each scheduled snapshot
# Written by every snapshot, so every snapshot holds it. Redis without it, while snapshots exist, lost its
# data: scheduled snapshots stop (an empty one must not become the newest) until a restore brings it back.
MARKER = PREFIX + "backup:marker"
log = logging.getLogger("runtime.batch.backup")


class BackupError(RuntimeError):
    """A snapshot or a restore that cannot go on; the message says what and where."""


@dataclass(frozen=True)
class Snapshot:
    key: str
    keys: int
    bytes: int


def raw_client(settings: BatchSettings) -> redis.Redis:
    """DUMP payloads are binary: this client does not decode replies."""
    return redis_client.connect(
        str(settings.redis_url), max_connections=4, outage_seconds=settings.redis_outage_seconds, decode=False
    )


async def write_snapshot(client: redis.Redis, out: IO[bytes]) -> int:
    """Every key of the batch service (PREFIX: all its Redis user may read), its absolute expiry (ms,
    -1 for none) and its DUMP, as gzip'd JSON lines; returns the count."""
    count = 0
    seen: set[bytes] = set()  # SCAN may return a key twice while Redis rehashes
    with gzip.GzipFile(fileobj=out, mode="wb") as archive:
        async for key in client.scan_iter(match=PREFIX + "*", count=1000):
            if key in seen:
                continue
            seen.add(key)
            async with client.pipeline(transaction=True) as pipe:  # the value and its expiry of one moment
                pipe.dump(key)
                pipe.pexpiretime(key)
                dump, expire_ms = await pipe.execute()
            if dump is None or expire_ms == -2:  # deleted or expired since SCAN
                continue
            row = {"key": _b64(key), "expire_ms": int(expire_ms), "dump": _b64(dump)}
            archive.write(json.dumps(row).encode() + b"\n")
            count += 1
    return count


async def read_snapshot(client: redis.Redis, source: IO[bytes], *, replace: bool) -> tuple[int, int]:
    """RESTORE every key of a snapshot; returns (restored, skipped as already expired)."""
    restored = skipped = 0
    now_ms = int(time.time() * 1000)
    with gzip.GzipFile(fileobj=source, mode="rb") as archive:
        for number, line in enumerate(archive, start=1):
            try:
                row = json.loads(line)
                key, dump, expire_ms = base64.b64decode(row["key"]), base64.b64decode(row["dump"]), row["expire_ms"]
            except (ValueError, KeyError, TypeError) as exc:
                raise BackupError(f"snapshot line {number}: not a backup row ({exc})") from None
            if expire_ms >= 0 and expire_ms <= now_ms:
                skipped += 1
                continue
            try:
                await client.restore(key, max(expire_ms, 0), dump, replace=replace, absttl=expire_ms >= 0)
            except ResponseError as exc:  # a damaged payload, or the key exists (a race with a writer)
                raise BackupError(f"snapshot line {number}: key {key!r}: Redis refused it: {exc}") from None
            restored += 1
    return restored, skipped


async def snapshot(settings: BatchSettings, objects: ObjectStore, client: redis.Redis, *, keep: int) -> Snapshot:
    """Take a snapshot into S3 (spooled to disk past 8 MB), then delete all but the newest `keep`."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    key = f"{BACKUP_PREFIX}{stamp}-{time.time_ns() % 10**9:09d}.jsonl.gz"
    await client.set(MARKER, stamp)
    with tempfile.SpooledTemporaryFile(max_size=8 * 1024 * 1024) as spool:
        count = await write_snapshot(client, spool)
        size = spool.tell()
        spool.seek(0)
        await asyncio.to_thread(objects.upload, key, spool)
    for old in (await asyncio.to_thread(list_snapshots, objects))[keep:]:
        await asyncio.to_thread(objects.delete, old)
    return Snapshot(key=key, keys=count, bytes=size)


def list_snapshots(objects: ObjectStore) -> list[str]:
    """Snapshot keys in the bucket, newest first (their names sort by time)."""
    paginator = objects.client.get_paginator("list_objects_v2")
    found = [
        item["Key"]
        for page in paginator.paginate(Bucket=objects.bucket, Prefix=BACKUP_PREFIX)
        for item in page.get("Contents", [])
    ]
    return sorted(found, reverse=True)


async def restore(objects: ObjectStore, client: redis.Redis, *, key: str | None, replace: bool) -> tuple[str, int, int]:
    """Restore the snapshot `key` (default: the newest) into Redis; refuses a non-empty Redis without `replace`."""
    if key is None:
        snapshots = await asyncio.to_thread(list_snapshots, objects)
        if not snapshots:
            raise BackupError(f"no snapshot under s3://{objects.bucket}/{BACKUP_PREFIX}")
        key = snapshots[0]
    if not replace and await client.dbsize():
        raise BackupError(
            f"Redis holds {await client.dbsize()} keys: restoring over them needs --replace "
            "(keys in both take the snapshot's value; keys only in Redis stay)"
        )
    with tempfile.TemporaryFile() as local:
        try:
            await asyncio.to_thread(objects.client.download_fileobj, objects.bucket, key, local)
        except ClientError as exc:
            raise BackupError(f"s3://{objects.bucket}/{key}: {exc}") from None
        local.seek(0)
        restored, skipped = await read_snapshot(client, local, replace=replace)
    await reconcile(client)
    return key, restored, skipped


FENCE_JUMP = 1_000_000


async def reconcile(client: redis.Redis) -> None:
    """Make a restored job store whole again: the snapshot is consistent per key, not across keys.

    - Fences jump ahead, so a worker that outlived the loss holds a stale fence and writes nothing.
    - A job not ended that is in no queue, delay or lease set (read before a claim moved it) is queued.
    - A job's running totals are recomputed from its checkpoints, which may be newer or older.
    """
    queue, delayed, leases = (PREFIX + "queue").encode(), (PREFIX + "delayed").encode(), (PREFIX + "leases").encode()
    active: list[bytes] = list(await client.zrange(PREFIX + "active", 0, -1))  # type: ignore[arg-type]
    for raw_id in active:
        batch_id = raw_id.decode()
        job = f"{PREFIX}batch:{batch_id}:job"
        if not await client.exists(job):
            continue
        await client.hincrby(job, "fence", FENCE_JUMP)
        placed = [await client.zscore(name, raw_id) for name in (queue, delayed, leases)]
        if all(score is None for score in placed):
            score = await client.hget(job, "score")
            if score is not None:
                await client.zadd(queue, {raw_id: float(score)})
        plan_raw = await client.get(f"{PREFIX}batch:{batch_id}:plan")
        invalid = json.loads(plan_raw).get("invalid_lines", 0) if plan_raw else 0
        completed = failed = 0
        for raw in (await client.hgetall(f"{PREFIX}batch:{batch_id}:chunks")).values():
            checkpoint = json.loads(raw)
            completed += int(checkpoint.get("completed", 0))
            failed += int(checkpoint.get("failed", 0))
        await client.hset(job, mapping={"completed": completed, "failed": failed + invalid})


async def take_if_due(settings: BatchSettings, objects: ObjectStore, client: redis.Redis) -> Snapshot | None:
    """The schedule: the first worker to take the lock after `backup_interval_seconds` takes the snapshot."""
    interval = settings.backup_interval_seconds
    if interval <= 0 or not await client.set(SCHEDULE_LOCK, b"1", nx=True, px=max(1, int(interval * 1000))):
        return None
    if not await client.exists(MARKER) and (await asyncio.to_thread(list_snapshots, objects)) != []:
        log.error(
            "redis backup skipped: Redis holds no backup marker but snapshots exist in s3://%s/%s, so it lost its "
            "data; restore one (python -m runtime.batch.backup restore --replace) or take one by hand to start over",
            objects.bucket,
            BACKUP_PREFIX,
        )
        return None
    taken = await snapshot(settings, objects, client, keep=settings.backup_keep)
    log.info("redis backup: %d keys, %d bytes at s3://%s/%s", taken.keys, taken.bytes, objects.bucket, taken.key)
    return taken


def _b64(value: bytes | str) -> str:
    return base64.b64encode(value if isinstance(value, bytes) else value.encode()).decode()


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="python -m runtime.batch.backup", description=__doc__.splitlines()[0])
    commands = root.add_subparsers(dest="command", required=True)
    commands.add_parser("snapshot", help="take a snapshot now")
    commands.add_parser("list", help="the snapshots in the bucket, newest first")
    put_back = commands.add_parser("restore", help="restore a snapshot into Redis")
    put_back.add_argument("--key", help="the snapshot's object key (default: the newest)")
    put_back.add_argument("--replace", action="store_true", help="restore although Redis already holds keys")
    return root


async def run(args: argparse.Namespace, settings: BatchSettings) -> int:
    objects = ObjectStore(settings, backups=True)
    client = raw_client(settings)
    try:
        if args.command == "snapshot":
            taken = await snapshot(settings, objects, client, keep=settings.backup_keep)
            print(f"s3://{objects.bucket}/{taken.key}: {taken.keys} keys, {taken.bytes} bytes")
        elif args.command == "list":
            for key in await asyncio.to_thread(list_snapshots, objects):
                print(f"s3://{objects.bucket}/{key}")
        else:
            key, restored, skipped = await restore(objects, client, key=args.key, replace=args.replace)
            print(f"restored {restored} keys from s3://{objects.bucket}/{key} ({skipped} already expired, skipped)")
        return 0
    except BackupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (RedisError, BotoCoreError, ClientError, OSError) as exc:
        print(f"error: {args.command} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        await client.aclose()


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        settings = BatchSettings()  # from BATCH_* variables
    except ValidationError as exc:
        problem = exc.errors()[0]
        print(f"error: BATCH_{str(problem['loc'][0]).upper()}: {problem['msg']}", file=sys.stderr)
        return 2
    return asyncio.run(run(args, settings))


if __name__ == "__main__":
    sys.exit(main())
