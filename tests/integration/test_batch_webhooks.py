"""Webhooks tried by tenants against each other (issue #32, items 4 and 9): real redis-server, moto S3,
the batch API and a worker (an engine that answers at once), receivers on loopback.

- A receiver that trickles its answer a byte at a time (never tripping a read timeout) holds up neither
  another tenant's webhook nor the worker's heartbeat: deliveries run apart from the heartbeat,
  concurrently, at most `BATCH_WEBHOOK_PER_RECEIVER` to one receiver, each attempt cut at
  `BATCH_WEBHOOK_DEADLINE_SECONDS`.
- Each key's webhooks are signed with that key's own secret (shown once by `keys create`), so a tenant
  cannot sign an event that another tenant's receiver accepts.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import openai
import pytest
import redis
import redis.asyncio as aioredis

from harness.servers import BatchApi, BatchWorker, batch_env, wait_for
from runtime.batch import keys, webhooks
from runtime.batch.models import Batch
from runtime.batch.urls import UrlPolicy
from tests.integration.batch_fixtures import TricklingReceiver, WebhookReceiver, admin_cli, chat_lines, run_private

pytestmark = pytest.mark.integration
SECRET_LINE = re.compile(r"^webhook secret (whsec_\S+) ", re.MULTILINE)


@dataclass
class Tenant:
    key: str
    key_id: str
    webhook_secret: str


@dataclass
class Stack:
    env: dict[str, str]
    api: BatchApi
    worker: BatchWorker
    tenants: dict[str, Tenant]
    admin: redis.Redis

    def client(self, who: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.api.url}/v1", api_key=self.tenants[who].key, max_retries=0)

    def submit(self, who: str, webhook_url: str) -> str:
        client = self.client(who)
        uploaded = client.files.create(
            file=("in.jsonl", io.BytesIO(chat_lines(1, model="instant")[0].encode())), purpose="batch"
        )
        batch = client.batches.create(
            input_file_id=uploaded.id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            metadata={"webhook_url": webhook_url},
        )
        return batch.id

    def last_heartbeat_ms(self) -> int:
        return max((int(v) for v in self.admin.hvals(keys.WORKERS)), default=0)


def new_tenant(env: dict[str, str], name: str) -> Tenant:
    created = admin_cli(env, "keys", "create", name)
    assert created.returncode == 0, created.stderr
    secret = SECRET_LINE.search(created.stderr)
    assert secret is not None, f"`keys create` showed no webhook secret: {created.stderr!r}"
    key_id = created.stderr.split()[1]
    return Tenant(created.stdout.strip(), key_id, secret.group(1))


@pytest.fixture(scope="module")
def stack(redis_server, s3_server, tmp_path_factory) -> Iterator[Stack]:
    admin = redis.Redis.from_url(redis_server.admin_url, decode_responses=True)
    admin.flushdb()
    log_dir = tmp_path_factory.mktemp("batch-webhooks")
    env = batch_env(
        redis_server, s3_server, s3_bucket="batch-webhooks", model="instant", engine="http", url_allowlist="127.0.0.1"
    )
    env["BATCH_VLLM_BASE_URL"] = "http://127.0.0.1:9/v1"  # never called: the worker's engine answers at once
    env["BATCH_WEBHOOK_DEADLINE_SECONDS"] = "55"  # the trickle outlasts the test's checks, not the deadline
    api = BatchApi(log_dir, env)
    worker = BatchWorker(log_dir, env, engine_factory="bench.batch_engines:instant")
    api.start()
    worker.start()
    try:
        tenants = {name: new_tenant(env, name) for name in ("alice", "bob")}
        yield Stack(env, api, worker, tenants, admin)
    finally:
        worker.stop()
        api.stop()
        admin.close()


def delivery_of(receiver: WebhookReceiver, batch_id: str) -> dict | None:
    return next((d for d in receiver.deliveries if json.loads(d["body"])["data"]["id"] == batch_id), None)


def webhook_of(stack: Stack, who: str, what: str) -> dict:
    """The delivery of the webhook of a batch `who` submits to a receiver of their own."""
    receiver = WebhookReceiver()
    try:
        batch_id = stack.submit(who, f"{receiver.url}/hook")
        return wait_for(lambda: delivery_of(receiver, batch_id), 60, what)
    finally:
        receiver.close()


def test_a_trickling_receiver_holds_up_neither_another_tenants_webhook_nor_the_heartbeat(stack: Stack) -> None:
    slow, fast = TricklingReceiver(), WebhookReceiver()
    try:
        stack.submit("alice", f"{slow.url}/hook")
        wait_for(slow.started.is_set, 60, "alice's webhook to reach her trickling receiver")
        beat_then = stack.last_heartbeat_ms()
        bob_batch = stack.submit("bob", f"{fast.url}/hook")
        # while alice's receiver still trickles (it is never released before these hold) ...
        wait_for(lambda: delivery_of(fast, bob_batch), 60, "bob's webhook while alice's receiver trickles")
        wait_for(lambda: stack.last_heartbeat_ms() > beat_then, 60, "a heartbeat while alice's receiver trickles")
        health = httpx.get(f"{stack.worker.url}/health", timeout=10)
        assert health.status_code == 200, health.text
        assert slow.open == 1 and slow.finished == 0 and not slow.released.is_set()
        slow.released.set()
        wait_for(lambda: slow.finished == 1, 60, "alice's delivery to finish once her receiver answers")
    finally:
        slow.close()
        fast.close()


def test_each_tenant_verifies_only_its_own_webhooks_and_cannot_forge_anothers(stack: Stack) -> None:
    alice, bob = stack.tenants["alice"], stack.tenants["bob"]
    assert alice.webhook_secret != bob.webhook_secret
    delivery = webhook_of(stack, "bob", "bob's webhook")
    headers, body = delivery["headers"], delivery["body"]
    timestamp, signature = int(headers["X-Webhook-Timestamp"]), headers["X-Webhook-Signature"]
    assert webhooks.verify(bob.webhook_secret, timestamp, body, signature)
    assert not webhooks.verify(stack.env["BATCH_WEBHOOK_SECRET"], timestamp, body, signature)  # not the stack's
    # alice, who knows only her own secret, forges a "completed" event for bob's receiver
    forged = json.dumps({**json.loads(body), "type": "batch.completed", "id": "whd_forged"}).encode()
    forged_signature = webhooks.sign(alice.webhook_secret, timestamp, forged)
    assert not webhooks.verify(bob.webhook_secret, timestamp, forged, forged_signature)


def test_a_rotated_secret_signs_the_next_webhook_and_the_old_one_no_longer_verifies(stack: Stack) -> None:
    alice = stack.tenants["alice"]
    rotated = admin_cli(stack.env, "keys", "rotate-webhook-secret", alice.key_id)
    assert rotated.returncode == 0, rotated.stderr
    new_secret = rotated.stdout.strip()
    assert new_secret.startswith("whsec_") and new_secret != alice.webhook_secret
    delivery = webhook_of(stack, "alice", "alice's webhook after rotation")
    stamp, body, signature = (
        int(delivery["headers"]["X-Webhook-Timestamp"]),
        delivery["body"],
        delivery["headers"]["X-Webhook-Signature"],
    )
    assert webhooks.verify(new_secret, stamp, body, signature)
    assert not webhooks.verify(alice.webhook_secret, stamp, body, signature)
    stack.tenants["alice"] = Tenant(alice.key, alice.key_id, new_secret)
    unknown = admin_cli(stack.env, "keys", "rotate-webhook-secret", "0" * 16)
    assert unknown.returncode == 1 and "no key has the id" in unknown.stderr
    short = admin_cli(stack.env, "keys", "rotate-webhook-secret", "abc")
    assert short.returncode == 2 and "expected the 16-character id" in short.stderr


def test_one_receiver_gets_at_most_its_budget_at_once_and_each_attempt_ends_at_the_deadline(redis_server) -> None:
    """The sender alone on real Redis: three deliveries to a receiver that never finishes answering and one
    to another receiver. The slow one gets two connections at most (the third waits, no attempt counted),
    the other its delivery, and both slow attempts are cut at the deadline though the receiver never answered."""
    slow, fast = TricklingReceiver(), WebhookReceiver()
    batch = Batch(id="b1", endpoint="/v1/chat/completions", input_file_id="f", status="completed", created_at=1)

    async def scenario() -> dict[str, int]:
        # a database of its own: the module's worker (database 0) must not claim these deliveries
        client = aioredis.Redis.from_url(redis_server.admin_url.removesuffix("/0") + "/15", decode_responses=True)
        await client.delete(keys.WEBHOOKS)
        sender = webhooks.WebhookSender(
            client, "s", 5, UrlPolicy(("127.0.0.1",)), deadline_s=1.0, concurrency=8, per_receiver=2
        )
        try:
            slow_ids = [await webhooks.enqueue(client, f"{slow.url}/hook", batch, None) for _ in range(3)]
            await webhooks.enqueue(client, f"{fast.url}/hook", batch, None)
            await sender.deliver_due()  # returns: every attempt it started has ended
            return {i: json.loads(await client.get(keys.webhook(i)))["attempts"] for i in slow_ids if i}
        finally:
            await sender.close()
            await client.aclose()

    try:
        attempts = run_private(scenario())
        assert len(fast.deliveries) == 1
        assert slow.most_open == 2 and len(slow.bodies) == 2
        assert not slow.released.is_set() and slow.finished == 0  # never answered: the deadline ended them
        assert sorted(attempts.values()) == [0, 1, 1]  # the third waited its turn without an attempt counted
        wait_for(lambda: slow.cut == 2, 30, "the receiver to see both cut connections")
    finally:
        slow.close()
        fast.close()
