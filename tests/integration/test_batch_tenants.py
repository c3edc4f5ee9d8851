"""Tenant isolation in the batch API, tried as a second tenant would: real redis-server, moto S3, the
API and a worker (an engine that answers at once), driven with the official `openai` client.

Keys are made with the admin CLI as an operator would. Another tenant's objects are 404 on every
route (never 403: that would confirm the id exists) and absent from its lists; an admin key sees
everything; a revoked key is refused on its next request; /metrics needs no key only on the
internal listener.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import openai
import pytest
import redis

from runtime.local.servers import BatchApi, BatchWorker, batch_env, free_port, wait_for
from tests.integration.batch_fixtures import chat_lines

pytestmark = pytest.mark.integration
TERMINAL = {"completed", "failed", "expired", "cancelled"}


@dataclass
class Tenants:
    env: dict[str, str]
    api: BatchApi
    internal_url: str
    keys: dict[str, str]  # name -> key: alice, bob (tenants), admin (the bootstrap key)

    def client(self, who: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.api.url}/v1", api_key=self.keys[who], max_retries=0)

    def http(self, who: str) -> httpx.Client:
        return httpx.Client(base_url=self.api.url, headers={"Authorization": f"Bearer {self.keys[who]}"}, timeout=30)


def admin_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runtime.batch.admin", *args],
        env={**os.environ, "BATCH_REDIS_URL": env["BATCH_REDIS_URL"]},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture(scope="module")
def tenants(redis_server, s3_server, tmp_path_factory) -> Iterator[Tenants]:
    redis.Redis.from_url(redis_server.url).flushdb()
    log_dir = tmp_path_factory.mktemp("batch-tenants")
    env = batch_env(redis_server, s3_server, s3_bucket="batch-tenants", model="instant", engine="http")
    env["BATCH_VLLM_BASE_URL"] = "http://127.0.0.1:9/v1"  # never called: the worker's engine answers at once
    internal_port = free_port()
    api = BatchApi(log_dir, env, internal_port=internal_port)
    worker = BatchWorker(log_dir, env, engine_factory="bench.batch_engines:instant")
    api.start()
    worker.start()
    made = {}
    for name in ("alice", "bob"):
        created = admin_cli(env, "keys", "create", name)
        assert created.returncode == 0, created.stderr
        made[name] = created.stdout.strip()
    try:
        yield Tenants(env, api, f"http://127.0.0.1:{internal_port}", {**made, "admin": env["BATCH_BOOTSTRAP_API_KEY"]})
    finally:
        worker.stop()
        api.stop()


def finished_batch(client: openai.OpenAI, lines: list[str]):
    uploaded = client.files.create(file=("in.jsonl", io.BytesIO("\n".join(lines).encode())), purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    return wait_for(
        lambda: (b := client.batches.retrieve(batch.id)).status in TERMINAL and b, 60, f"batch {batch.id}", 0.1
    )


def test_another_tenants_files_and_batches_are_not_found_on_any_route(tenants: Tenants) -> None:
    alice, bob = tenants.client("alice"), tenants.client("bob")
    done = finished_batch(alice, chat_lines(5, model="instant"))
    assert done.status == "completed" and done.output_file_id, done
    queued_file = alice.files.create(
        file=("q.jsonl", io.BytesIO(chat_lines(1, model="instant")[0].encode())), purpose="batch"
    )

    for file_id in (done.input_file_id, done.output_file_id, queued_file.id):
        with pytest.raises(openai.NotFoundError):
            bob.files.retrieve(file_id)
        with pytest.raises(openai.NotFoundError):
            bob.files.content(file_id)
        with pytest.raises(openai.NotFoundError):
            bob.files.delete(file_id)
    with pytest.raises(openai.NotFoundError):
        bob.batches.retrieve(done.id)
    with pytest.raises(openai.NotFoundError):
        bob.batches.cancel(done.id)
    with pytest.raises(openai.NotFoundError):  # nor may bob run a batch on alice's input
        bob.batches.create(input_file_id=queued_file.id, endpoint="/v1/chat/completions", completion_window="24h")
    with tenants.http("bob") as http:
        for path in (f"/v1/batch/{done.id}", f"/v1/batch/{done.id}/results"):
            response = http.get(path)
            assert response.status_code == 404 and response.json()["error"]["code"] == "not_found", path
    assert done.id not in [b.id for b in bob.batches.list(limit=100).data]

    # alice still has all of it: bob's attempts changed nothing
    assert alice.files.retrieve(queued_file.id).id == queued_file.id
    assert len(alice.files.content(done.output_file_id).text.splitlines()) == 5
    with tenants.http("alice") as http:
        assert http.get(f"/v1/batch/{done.id}/results").status_code == 200
    assert done.id in [b.id for b in alice.batches.list(limit=100).data]


def test_each_tenant_lists_only_its_own_batches_and_an_admin_lists_all(tenants: Tenants) -> None:
    mine = {
        who: finished_batch(tenants.client(who), chat_lines(2, model="instant", prefix=who)).id
        for who in ("alice", "bob")
    }
    alice_list = [b.id for b in tenants.client("alice").batches.list(limit=100).data]
    bob_list = [b.id for b in tenants.client("bob").batches.list(limit=100).data]
    assert mine["alice"] in alice_list and mine["bob"] not in alice_list
    assert mine["bob"] in bob_list and mine["alice"] not in bob_list
    admin = tenants.client("admin")
    assert {mine["alice"], mine["bob"]} <= {b.id for b in admin.batches.list(limit=100).data}
    assert admin.batches.retrieve(mine["bob"]).id == mine["bob"]  # an admin reads any tenant's batch

    # paging within one tenant's list skips nobody and shows no one else's
    first = tenants.client("alice").batches.list(limit=1)
    rest = tenants.client("alice").batches.list(limit=100, after=first.data[0].id)
    assert [first.data[0].id, *(b.id for b in rest.data)] == alice_list


def test_a_revoked_key_is_refused_on_its_next_request_without_a_restart(tenants: Tenants) -> None:
    created = admin_cli(tenants.env, "keys", "create", "carol")
    key = created.stdout.strip()
    carol = openai.OpenAI(base_url=f"{tenants.api.url}/v1", api_key=key, max_retries=0)
    assert carol.batches.list().data == []
    listed = admin_cli(tenants.env, "keys", "list")
    assert key not in listed.stdout  # the key is shown once, at creation
    (line,) = [line for line in listed.stdout.splitlines() if line.endswith(" carol")]
    key_id = line.split()[0]
    assert "tenant" in line and key_id in created.stderr
    revoked = admin_cli(tenants.env, "keys", "revoke", key_id)
    assert revoked.returncode == 0, revoked.stderr
    with pytest.raises(openai.AuthenticationError):
        carol.batches.list()
    again = admin_cli(tenants.env, "keys", "revoke", key_id)
    assert again.returncode == 1 and "no key has the id" in again.stderr


def test_the_admin_cli_names_bad_input(tenants: Tenants) -> None:
    short = admin_cli(tenants.env, "keys", "revoke", "abc")
    assert short.returncode == 2 and "expected the 16-character id" in short.stderr
    empty = admin_cli(tenants.env, "keys", "create", " ")
    assert empty.returncode == 2 and "name is empty" in empty.stderr
    no_redis = subprocess.run(
        [sys.executable, "-m", "runtime.batch.admin", "keys", "list"],
        env={k: v for k, v in os.environ.items() if k != "BATCH_REDIS_URL"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert no_redis.returncode == 2 and "BATCH_REDIS_URL" in no_redis.stderr


def test_metrics_need_an_admin_key_on_the_public_listener_and_none_on_the_internal_one(tenants: Tenants) -> None:
    assert httpx.get(f"{tenants.api.url}/metrics", timeout=10).status_code == 401
    with tenants.http("alice") as http:
        assert http.get("/metrics").status_code == 403
    with tenants.http("admin") as http:
        assert "batch_queue_depth" in http.get("/metrics").text
    internal = httpx.get(f"{tenants.internal_url}/metrics", timeout=10)
    assert internal.status_code == 200 and "batch_queue_depth" in internal.text
    assert httpx.get(f"{tenants.internal_url}/health", timeout=10).json()["status"] == "ok"
    # the internal listener serves nothing else: no files, no batches
    assert httpx.get(f"{tenants.internal_url}/v1/batches", timeout=10).status_code == 404
