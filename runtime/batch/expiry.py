"""Expiry that happens whatever the S3 server does: the worker deletes expired results itself.

The bucket's lifecycle rule (runtime.batch.bucket) stays as a second line; this sweep does not depend on
it, and talks to S3 through the S3 API only (ListObjectsV2, DeleteObjects). It finds what has expired two ways:
- the expiry index (keys.EXPIRY): every file object, `files/<id>` (uploads, output and error files), with
  the time its record expires (expires_after / output_expires_after, else the retention), written in the
  same transaction as the record (JobStore.save_file);
- the bucket's listing: whatever under `files/` or `batches/` is older than the retention (LastModified):
  an object whose record was never written (a crash between upload and record), a job's chunks left
  behind, anything the index missed. Other prefixes (the Redis backups) are never deleted here.

Order, so that a sweep stopped anywhere (an exception, a kill -9) loses nothing and deletes nothing early:
the file's Redis record goes first (the API answers 404 and lists it no more: it never serves a record
whose object is gone), then the object (DeleteObjects: deleting a missing key succeeds, so a repeat is
harmless), then its index entry, only for the keys S3 confirmed. A sweep run again finds what is left and
finishes it. Nothing is deleted for lack of evidence: a `files/` object without a record goes only past
the retention, so a Redis that lost its data does not make every result look expired.

Bounded: DeleteObjects with at most `expiry_delete_batch` keys, at most `expiry_sweep_max_deletes`
objects and `expiry_sweep_max_listed` listed per sweep. The listing resumes where the last sweep stopped
(its cursor in Redis); a complete listing publishes how old the oldest object past the retention still
there is (batch_expiry_overdue_age_seconds, which the alert BatchResultsOverdue reads).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as redis

from runtime.batch import keys, metrics
from runtime.batch.models import StoredFile
from runtime.batch.settings import BatchSettings
from runtime.batch.storage import ObjectStore

log = logging.getLogger("runtime.batch.expiry")
SWEPT = ("files/", "batches/")  # the prefixes the sweep deletes under; the gauge's "other" is the rest
PREFIX_NAMES = ("files", "batches", "other")
LIST_PAGE = 1000  # ListObjectsV2's most


def prefix_of(key: str) -> str:
    """The gauge's label for an object key."""
    head = key.split("/", 1)[0]
    return head if head in ("files", "batches") else "other"


@dataclass
class SweepReport:
    """What one sweep did (the worker logs it; tests read it)."""

    deleted: dict[str, int] = field(default_factory=lambda: {"expires_after": 0, "retention": 0})
    refused: int = 0
    listed: int = 0
    listing_complete: bool = False
    stopped: bool = False  # the lock ran out mid-sweep: another worker goes on from the cursor


class ExpirySweeper:
    """One bounded sweep at a time; `clock` (epoch seconds) decides what has expired, so tests move time."""

    def __init__(
        self,
        settings: BatchSettings,
        objects: ObjectStore,
        client: redis.Redis,
        *,
        clock: Callable[[], float] = time.time,
    ):
        self.settings = settings
        self.objects = objects
        self.redis = client
        self.clock = clock
        self._token: str | None = None  # the lock this sweep holds (None: run directly, unlocked)

    # --- the schedule --------------------------------------------------------------------

    async def sweep_if_due(self) -> SweepReport | None:
        """The first worker to take the lock after `expiry_sweep_seconds` sweeps; the others only refresh their
        gauges from the last published listing (so every worker exports the fleet's figures)."""
        token = uuid.uuid4().hex
        interval_ms = max(1, int(self.settings.expiry_sweep_seconds * 1000))
        if not await self.redis.set(keys.EXPIRY_LOCK, token, nx=True, px=interval_ms):
            await self.refresh_metrics()
            return None
        self._token = token
        try:
            return await self.sweep()
        finally:
            self._token = None

    async def _holds_lock(self) -> bool:
        """Still this sweep's turn: a sweep longer than the interval stops, rather than run beside the next."""
        return self._token is None or await self.redis.get(keys.EXPIRY_LOCK) in (self._token, self._token.encode())

    # --- one sweep -----------------------------------------------------------------------

    async def sweep(self) -> SweepReport:
        """Delete what has expired by `clock()`: due index entries first, then the listing's next pages."""
        report = SweepReport()
        now = self.clock()
        try:
            budget = await self._sweep_index(now, self.settings.expiry_sweep_max_deletes, report)
            await self._sweep_listing(now, budget, report)
        except Exception:
            metrics.expiry_errors.labels("sweep").inc()
            raise
        finally:
            await self.refresh_metrics()
        return report

    async def _sweep_index(self, now: float, budget: int, report: SweepReport) -> int:
        """Files whose own expiry has passed; returns the delete budget left."""
        skip = 0  # entries whose object S3 refused to delete stay in the index: read past them
        while budget > 0:
            if not await self._holds_lock():
                report.stopped = True
                return 0
            due = _texts(
                await self.redis.zrangebyscore(
                    keys.EXPIRY, "-inf", now, start=skip, num=min(self.settings.expiry_delete_batch, budget)
                )
            )
            if not due:
                break
            foreign = [k for k in due if not _is_file_key(k)]
            if foreign:  # the index names only file objects: anything else is not the sweep's to delete
                log.warning("expiry index: dropping %d entries that are not file objects: %s", len(foreign), foreign)
                await self.redis.zrem(keys.EXPIRY, *foreign)
            ready, sizes = await self._retire([k for k in due if _is_file_key(k)], now)
            deleted = await self._delete(ready, "expires_after", sizes, report)
            if deleted:
                await self.redis.zrem(keys.EXPIRY, *deleted)
            skip += len(ready) - len(deleted)
            budget -= len(ready)
            if not ready and not foreign:  # every entry moved to its record's later expiry: nothing is due
                break
        return budget

    async def _sweep_listing(self, now: float, budget: int, report: SweepReport) -> None:
        """The bucket's next pages from the saved cursor: what under the swept prefixes is older than the
        retention goes; what older is left (any prefix) is remembered for the gauge until the listing ends."""
        retention = self.settings.retention_seconds
        state = _text_map(await self.redis.hgetall(keys.EXPIRY_PASS))
        cursor = state.get("cursor", "")
        oldest = {p: float(state[f"oldest:{p}"]) for p in PREFIX_NAMES if state.get(f"oldest:{p}")}
        listed = 0
        while listed < self.settings.expiry_sweep_max_listed:
            if not await self._holds_lock():
                report.stopped = True
                return
            request: dict[str, Any] = {
                "Bucket": self.objects.bucket,
                "MaxKeys": min(LIST_PAGE, self.settings.expiry_sweep_max_listed - listed),
            }
            if cursor:
                request["StartAfter"] = cursor
            page = await asyncio.to_thread(self.objects.client.list_objects_v2, **request)
            contents = page.get("Contents", [])
            listed += len(contents)
            report.listed += len(contents)
            overdue = [
                (str(o["Key"]), o["LastModified"].timestamp(), int(o.get("Size", 0)))
                for o in contents
                if now - o["LastModified"].timestamp() > retention
            ]
            ours = [o for o in overdue if o[0].startswith(SWEPT)][: max(budget, 0)]
            sizes = {key: size for key, _, size in ours}
            files_ready, _ = await self._retire([k for k, _, _ in ours if _is_file_key(k)], now)
            candidates = [k for k, _, _ in ours if not _is_file_key(k) or k in files_ready]
            deleted = set(await self._delete(candidates, "retention", sizes, report))
            budget -= len(candidates)
            gone_from_index = [k for k in deleted if _is_file_key(k)]
            if gone_from_index:
                await self.redis.zrem(keys.EXPIRY, *gone_from_index)
            for key, modified, _ in overdue:
                if key not in deleted:
                    name = prefix_of(key)
                    oldest[name] = min(oldest.get(name, modified), modified)
            if contents:
                cursor = str(contents[-1]["Key"])
            if not page.get("IsTruncated"):
                await self._publish(now, oldest)
                report.listing_complete = True
                return
            async with self.redis.pipeline(transaction=True) as pipe:  # after the deletes: a repeat is harmless
                pipe.delete(keys.EXPIRY_PASS)
                pipe.hset(keys.EXPIRY_PASS, mapping={"cursor": cursor, **{f"oldest:{p}": t for p, t in oldest.items()}})
                pipe.expire(keys.EXPIRY_PASS, 2 * retention)  # a listing nobody finishes starts over
                await pipe.execute()

    async def _retire(self, file_keys: list[str], now: float) -> tuple[list[str], dict[str, int]]:
        """Remove the Redis records of these file objects (record, listing entries) before the objects go;
        returns the keys now free to delete and the sizes the records held. A record that is still valid at
        `now` keeps its object (its index entry moves to the record's own expiry)."""
        if not file_keys:
            return [], {}
        ids = [k.removeprefix("files/") for k in file_keys]
        raws = await self.redis.mget([keys.file(i) for i in ids])
        ready: list[str] = []
        sizes: dict[str, int] = {}
        later: dict[str, float] = {}
        async with self.redis.pipeline(transaction=True) as pipe:
            for key, file_id, raw in zip(file_keys, ids, raws, strict=True):
                record = StoredFile.model_validate_json(raw) if raw else None
                if record is not None and record.expires_at is not None and record.expires_at > now:
                    later[key] = record.expires_at
                    continue
                ready.append(key)
                pipe.delete(keys.file(file_id))
                pipe.zrem(keys.FILES, file_id)
                if record is not None:
                    sizes[key] = record.bytes
                    if record.owner:
                        pipe.zrem(keys.owner_files(record.owner), file_id)
            if later:
                pipe.zadd(keys.EXPIRY, later, xx=True)
            await pipe.execute()
        return ready, sizes

    async def _delete(
        self, object_keys: list[str], reason: str, sizes: dict[str, int], report: SweepReport
    ) -> list[str]:
        """DeleteObjects in groups of `expiry_delete_batch`; returns the keys S3 confirmed deleted."""
        deleted: list[str] = []
        step = self.settings.expiry_delete_batch
        for start in range(0, len(object_keys), step):
            group = object_keys[start : start + step]
            reply = await asyncio.to_thread(
                self.objects.client.delete_objects,
                Bucket=self.objects.bucket,
                Delete={"Objects": [{"Key": k} for k in group], "Quiet": True},  # Quiet: only the failures come back
            )
            refused = {str(e.get("Key")): e for e in reply.get("Errors", [])}
            for key, error in refused.items():
                log.warning("expiry: S3 refused to delete %s: %s %s", key, error.get("Code"), error.get("Message"))
            metrics.expiry_errors.labels("delete").inc(len(refused))
            report.refused += len(refused)
            done = [k for k in group if k not in refused]
            metrics.expiry_deleted.labels(reason).inc(len(done))
            metrics.expiry_deleted_bytes.inc(sum(sizes.get(k, 0) for k in done))
            report.deleted[reason] += len(done)
            deleted.extend(done)
        return deleted

    async def _publish(self, now: float, oldest: dict[str, float]) -> None:
        """A complete listing: what it left past the retention becomes the fleet's figure; the next starts over."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(keys.EXPIRY_PASS, keys.EXPIRY_RESULT)
            pipe.hset(keys.EXPIRY_RESULT, mapping={"at": now, **{f"oldest:{p}": t for p, t in oldest.items()}})
            await pipe.execute()

    async def refresh_metrics(self) -> None:
        """The gauges from the last published listing (whichever worker finished it), aged to `clock()`."""
        result = _text_map(await self.redis.hgetall(keys.EXPIRY_RESULT))
        if "at" not in result:
            return
        now = self.clock()
        metrics.expiry_pass_timestamp.set(float(result["at"]))
        for name in PREFIX_NAMES:
            modified = result.get(f"oldest:{name}")
            metrics.expiry_overdue_age.labels(name).set(max(0.0, now - float(modified)) if modified else 0.0)


def _is_file_key(key: str) -> bool:
    return key.startswith("files/") and "/" not in key.removeprefix("files/") and key != "files/"


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _texts(values: Iterable[Any]) -> list[str]:
    return [_text(v) for v in values]


def _text_map(raw: dict[Any, Any]) -> dict[str, str]:
    return {_text(k): _text(v) for k, v in raw.items()}
