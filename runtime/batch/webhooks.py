"""Webhooks on terminal job states: a durable outbox in Redis, HMAC-SHA256 signed, retried.

A delivery is claimed SQS-style (its due time moves past a visibility timeout), so a worker that
dies mid-delivery leaves it to be sent again; receivers dedupe on the `X-Webhook-Id` header.
Signature: hex HMAC-SHA256 over "<timestamp>.<body>" in `X-Webhook-Signature: sha256=<hex>`, under
the webhook secret of the API key that created the batch (`keys create` shows it once; `keys
rotate-webhook-secret` replaces it), so one tenant's secret verifies no other tenant's deliveries.
A key with no secret of its own (the bootstrap key, older keys) is signed with the stack's secret.

Deliveries run concurrently in the sender's own task, apart from the worker's heartbeat: at most
`concurrency` at once, at most `per_receiver` to one receiver (scheme, host and port), and each
attempt ends within `deadline_s` whatever the receiver does (a receiver that trickles its answer a
byte at a time never trips a read timeout, so the deadline is what bounds it). A slow receiver
delays only its own deliveries.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import time
import uuid
from typing import Any
from urllib.parse import urlsplit

import httpx
import redis.asyncio as redis

from runtime.batch import auth, keys, metrics
from runtime.batch.jobs import now_ms
from runtime.batch.models import Batch
from runtime.batch.urls import UrlPolicy, UrlRefusedError

log = logging.getLogger(__name__)
EVENTS = {"completed", "failed", "cancelled", "expired"}
VISIBILITY_MS = 60_000  # an attempt's deadline must be shorter (settings.webhook_deadline_seconds)
RECEIVER_BUSY_DELAY_MS = 1_000  # a delivery to a receiver at its budget waits this long, no attempt counted
POLL_S = 0.5

_CLAIM = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 1)
if #due == 0 then return false end
redis.call('ZADD', KEYS[1], tonumber(ARGV[1]) + tonumber(ARGV[2]), due[1])
return due[1]
"""


def sign(secret: str, timestamp: int, body: bytes) -> str:
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


DEFAULT_TOLERANCE_S = 300


def verify(
    secret: str,
    timestamp: int,
    body: bytes,
    signature: str,
    *,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> bool:
    """What a receiver runs: the signature matches (constant time) and was made within `tolerance_s` of now,
    so a delivery captured and replayed later is refused. Dedupe on `X-Webhook-Id` within the tolerance."""
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, timestamp, body), signature)


def backoff_seconds(attempt: int) -> float:
    return min(2.0 ** (attempt - 1), 300.0)


async def enqueue(client: redis.Redis, url: str, batch: Batch, key_id: str | None) -> str | None:
    """Queue the webhook of a batch's terminal state; `key_id` (the key that created the batch) picks the
    secret that signs it."""
    event = batch.status.value
    if event not in EVENTS:
        return None
    delivery_id = f"whd_{uuid.uuid4().hex}"
    payload = {
        "id": delivery_id,
        "type": f"batch.{event}",
        "created_at": int(time.time()),
        "data": batch.model_dump(mode="json"),
    }
    async with client.pipeline(transaction=True) as pipe:
        pipe.set(
            keys.webhook(delivery_id), json.dumps({"url": url, "payload": payload, "attempts": 0, "key_id": key_id})
        )
        pipe.zadd(keys.WEBHOOKS, {delivery_id: now_ms()})
        await pipe.execute()
    return delivery_id


def receiver_of(url: str) -> str:
    """What the per-receiver budget counts by: scheme, host and port."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    return f"{parts.scheme}://{(parts.hostname or '').lower()}:{port or ''}"


class WebhookSender:
    def __init__(
        self,
        client: redis.Redis,
        secret: str,
        max_attempts: int,
        policy: UrlPolicy,
        timeout_s: float = 10.0,
        *,
        deadline_s: float = 30.0,
        concurrency: int = 16,
        per_receiver: int = 2,
    ):
        if deadline_s * 1000 >= VISIBILITY_MS:
            raise ValueError(f"webhook deadline {deadline_s}s: must be under the {VISIBILITY_MS // 1000}s visibility")
        self.redis = client
        self.secret = secret
        self.max_attempts = max_attempts
        self.policy = policy
        self.deadline_s = deadline_s
        self.concurrency = concurrency
        self.per_receiver = per_receiver
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        self.http = httpx.AsyncClient(timeout=min(timeout_s, deadline_s), follow_redirects=False, limits=limits)
        self._claim = client.register_script(_CLAIM)
        self._in_flight: set[asyncio.Task[None]] = set()
        self._receivers: dict[str, int] = {}

    async def deliver_due(self) -> int:
        """Start every delivery due now (up to `concurrency`) and wait for those attempts; returns how many."""
        started = await self.start_due()
        await asyncio.gather(*started)
        return len(started)

    async def start_due(self) -> list[asyncio.Task[None]]:
        """Claim due deliveries while fewer than `concurrency` are in flight; each attempt is its own task."""
        started: list[asyncio.Task[None]] = []
        while len(self._in_flight) < self.concurrency:
            delivery_id = await self._claim(keys=[keys.WEBHOOKS], args=[now_ms(), VISIBILITY_MS])
            if not delivery_id:
                break
            task = asyncio.create_task(self._attempt(delivery_id))
            self._in_flight.add(task)
            task.add_done_callback(self._finished)
            started.append(task)
        return started

    async def run(self, stopping: asyncio.Event) -> None:
        """The worker's delivery loop, its own task: a slow receiver holds up neither the heartbeat nor
        any other receiver's deliveries."""
        while not stopping.is_set():
            try:
                await self.start_due()
            except (redis.RedisError, OSError) as exc:
                log.warning("webhook delivery loop: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), POLL_S)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            # Redis away mid-attempt: the delivery stays claimed and is sent again after the visibility timeout
            log.warning("webhook attempt interrupted: %r", error)

    async def _attempt(self, delivery_id: str) -> None:
        raw = await self.redis.get(keys.webhook(delivery_id))
        if raw is None:
            await self.redis.zrem(keys.WEBHOOKS, delivery_id)
            return
        delivery = json.loads(raw)
        receiver = receiver_of(delivery["url"])
        if self._receivers.get(receiver, 0) >= self.per_receiver:
            await self.redis.zadd(keys.WEBHOOKS, {delivery_id: now_ms() + RECEIVER_BUSY_DELAY_MS})
            return
        self._receivers[receiver] = self._receivers.get(receiver, 0) + 1
        try:
            await self._send(delivery_id, delivery)
        finally:
            self._receivers[receiver] -= 1
            if not self._receivers[receiver]:
                del self._receivers[receiver]

    async def _secret_for(self, key_id: str | None) -> str:
        """The secret of the key that created the batch (auth.NoSuchKeyError once it is revoked)."""
        if key_id is None:  # queued before deliveries named their key
            return self.secret
        own = await auth.webhook_secret_of(self.redis, key_id)
        return self.secret if own is None else own

    async def _send(self, delivery_id: str, delivery: dict[str, Any]) -> None:
        delivery["attempts"] += 1
        body = json.dumps(delivery["payload"], separators=(",", ":")).encode()
        try:
            secret = await self._secret_for(delivery.get("key_id"))
            timestamp = int(time.time())
            headers = {
                "Content-Type": "application/json",
                "X-Webhook-Id": delivery_id,
                "X-Webhook-Timestamp": str(timestamp),
                "X-Webhook-Signature": sign(secret, timestamp, body),
            }
            async with asyncio.timeout(self.deadline_s):
                # Checked again at each attempt (the name may resolve elsewhere than when the job was created),
                # and sent to the address the check accepted, not to a second lookup's answer.
                pinned = await asyncio.to_thread(self.policy.pinned, delivery["url"], param="webhook_url")
                response = await self.http.post(
                    pinned.url, content=body, headers={**headers, **pinned.headers}, extensions=pinned.extensions
                )
            ok, reason = response.is_success, f"HTTP {response.status_code}"
        except auth.NoSuchKeyError:
            ok, reason = False, f"the API key {delivery['key_id']} that created the batch was revoked"
            delivery["attempts"] = self.max_attempts  # nobody is left to verify it: no retries
        except UrlRefusedError as refused:
            ok, reason = False, str(refused)
            delivery["attempts"] = self.max_attempts  # the policy will not change its mind: no retries
        except TimeoutError:
            ok, reason = False, f"no complete answer within {self.deadline_s:g}s (BATCH_WEBHOOK_DEADLINE_SECONDS)"
        except httpx.HTTPError as exc:
            ok, reason = False, f"{type(exc).__name__}: {exc}"
        if ok:
            metrics.webhook_deliveries.labels("delivered").inc()
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.zrem(keys.WEBHOOKS, delivery_id)
                pipe.delete(keys.webhook(delivery_id))
                await pipe.execute()
            return
        job = delivery["payload"]["data"]["id"]
        if delivery["attempts"] >= self.max_attempts:
            metrics.webhook_deliveries.labels("dropped").inc()
            log.error(
                "webhook %s to %s dropped after %d attempts: %s",
                delivery_id,
                delivery["url"],
                delivery["attempts"],
                reason,
                extra={"job_id": job},
            )
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.zrem(keys.WEBHOOKS, delivery_id)
                pipe.delete(keys.webhook(delivery_id))
                await pipe.execute()
            return
        metrics.webhook_deliveries.labels("retry").inc()
        log.warning(
            "webhook %s attempt %d failed: %s", delivery_id, delivery["attempts"], reason, extra={"job_id": job}
        )
        due = now_ms() + int(backoff_seconds(delivery["attempts"]) * 1000)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(keys.webhook(delivery_id), json.dumps(delivery))
            pipe.zadd(keys.WEBHOOKS, {delivery_id: due})
            await pipe.execute()

    async def close(self) -> None:
        """Stop the attempts in flight (each stays claimed and is sent again after the visibility timeout)."""
        for task in list(self._in_flight):
            task.cancel()
        await asyncio.gather(*self._in_flight, return_exceptions=True)
        await self.http.aclose()
