"""Webhooks on terminal job states: a durable outbox in Redis, HMAC-SHA256 signed, retried.

A delivery is claimed SQS-style (its due time moves past a visibility timeout), so a worker that
dies mid-delivery leaves it to be sent again; receivers dedupe on the `X-Webhook-Id` header.
Signature: hex HMAC-SHA256 over "<timestamp>.<body>" in `X-Webhook-Signature: sha256=<hex>`.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
import uuid

import httpx
import redis.asyncio as redis

from runtime.batch import keys, metrics
from runtime.batch.jobs import now_ms
from runtime.batch.models import Batch
from runtime.batch.urls import UrlPolicy, UrlRefusedError

log = logging.getLogger(__name__)
EVENTS = {"completed", "failed", "cancelled", "expired"}
VISIBILITY_MS = 60_000

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


async def enqueue(client: redis.Redis, url: str, batch: Batch) -> str | None:
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
        pipe.set(keys.webhook(delivery_id), json.dumps({"url": url, "payload": payload, "attempts": 0}))
        pipe.zadd(keys.WEBHOOKS, {delivery_id: now_ms()})
        await pipe.execute()
    return delivery_id


class WebhookSender:
    def __init__(self, client: redis.Redis, secret: str, max_attempts: int, policy: UrlPolicy, timeout_s: float = 10.0):
        self.redis = client
        self.secret = secret
        self.max_attempts = max_attempts
        self.policy = policy
        self.http = httpx.AsyncClient(timeout=timeout_s, follow_redirects=False)
        self._claim = client.register_script(_CLAIM)

    async def deliver_due(self) -> int:
        """Send every delivery that is due now; returns how many were attempted."""
        attempted = 0
        while delivery_id := await self._claim(keys=[keys.WEBHOOKS], args=[now_ms(), VISIBILITY_MS]):
            attempted += 1
            await self._attempt(delivery_id)
        return attempted

    async def _attempt(self, delivery_id: str) -> None:
        raw = await self.redis.get(keys.webhook(delivery_id))
        if raw is None:
            await self.redis.zrem(keys.WEBHOOKS, delivery_id)
            return
        delivery = json.loads(raw)
        delivery["attempts"] += 1
        body = json.dumps(delivery["payload"], separators=(",", ":")).encode()
        timestamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "X-Webhook-Id": delivery_id,
            "X-Webhook-Timestamp": str(timestamp),
            "X-Webhook-Signature": sign(self.secret, timestamp, body),
        }
        try:
            # Checked again at each attempt (the name may resolve elsewhere than when the job was created),
            # and sent to the address the check accepted, not to a second lookup's answer.
            pinned = await asyncio.to_thread(self.policy.pinned, delivery["url"], param="webhook_url")
            response = await self.http.post(
                pinned.url, content=body, headers={**headers, **pinned.headers}, extensions=pinned.extensions
            )
            ok, reason = response.is_success, f"HTTP {response.status_code}"
        except UrlRefusedError as refused:
            ok, reason = False, str(refused)
            delivery["attempts"] = self.max_attempts  # the policy will not change its mind: no retries
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
        await self.http.aclose()
