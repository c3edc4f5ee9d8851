"""The batch API tried as a second tenant and as an attacker with a key would: real redis-server, moto
S3, the API and a worker (an engine that answers at once), driven with the official `openai` client.

Tenants: keys are made with the admin CLI as an operator would. Another tenant's objects are 404 on
every route (never 403: that would confirm the id exists) and absent from its lists; an admin key
sees everything; a revoked key is refused on its next request; /metrics needs no key only on the
internal listener.
URLs: input_file_url and webhook_url never reach loopback, link-local, private or cluster-internal
addresses unless allowlisted, a redirect is checked again, and s3:// names only the batch bucket.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler

import httpx
import openai
import pytest
import redis

from harness.metrics import sample_value
from harness.servers import BatchApi, BatchWorker, batch_env, free_port, wait_for
from tests.integration.batch_fixtures import LoopbackServer, admin_cli, chat_lines, tenant_keys

pytestmark = pytest.mark.integration
TERMINAL = {"completed", "failed", "expired", "cancelled"}


class Recorder(LoopbackServer):
    """A real HTTP server on loopback that records every request; `redirect_to` makes it answer 302."""

    def __init__(self, redirect_to: str | None = None, body: bytes = b""):
        self.paths: list[str] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                recorder.paths.append(self.path)
                if redirect_to is not None:
                    self.send_response(302)
                    self.send_header("Location", redirect_to)
                    self.end_headers()
                    return
                self.send_response(200)
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                self.do_GET()

            def log_message(self, *_args) -> None:
                pass

        self.serve(Handler)


@dataclass
class Tenants:
    env: dict[str, str]
    api: BatchApi
    internal_url: str
    keys: dict[str, str]  # name -> key: alice, bob (tenants), admin (the bootstrap key)
    target: Recorder  # loopback, not allowlisted: nothing may reach it
    redirector: Recorder  # allowlisted (127.0.0.1:its port), redirects to `target`
    servers: list[Recorder] = field(default_factory=list)

    def client(self, who: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.api.url}/v1", api_key=self.keys[who], max_retries=0)

    def http(self, who: str) -> httpx.Client:
        return httpx.Client(base_url=self.api.url, headers={"Authorization": f"Bearer {self.keys[who]}"}, timeout=30)


@pytest.fixture(scope="module")
def tenants(redis_server, s3_server, tmp_path_factory) -> Iterator[Tenants]:
    redis.Redis.from_url(redis_server.admin_url).flushdb()
    log_dir = tmp_path_factory.mktemp("batch-tenants")
    env = batch_env(redis_server, s3_server, s3_bucket="batch-tenants", model="instant", engine="http")
    env["BATCH_VLLM_BASE_URL"] = "http://127.0.0.1:9/v1"  # never called: the worker's engine answers at once
    target = Recorder(body=chat_lines(1, model="instant")[0].encode())
    redirector = Recorder(redirect_to=f"{target.url}/in.jsonl")
    env["BATCH_URL_ALLOWLIST"] = f"127.0.0.1:{redirector.port}"  # that one port only, as an operator would
    internal_port = free_port()
    api = BatchApi(log_dir, env, internal_port=internal_port)
    worker = BatchWorker(log_dir, env, engine_factory="bench.batch_engines:instant")
    api.start()
    worker.start()
    made = tenant_keys(env, "alice", "bob")
    try:
        keys = {**made, "admin": env["BATCH_BOOTSTRAP_API_KEY"]}
        yield Tenants(env, api, f"http://127.0.0.1:{internal_port}", keys, target, redirector)
    finally:
        worker.stop()
        api.stop()
        target.close()
        redirector.close()


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
        assert sample_value(http.get("/metrics").text, "batch_queue_depth") is not None  # a sample, not HELP
    internal = httpx.get(f"{tenants.internal_url}/metrics", timeout=10)
    assert internal.status_code == 200 and sample_value(internal.text, "batch_queue_depth") is not None
    assert httpx.get(f"{tenants.internal_url}/health", timeout=10).json()["status"] == "ok"
    # the internal listener serves nothing else: no files, no batches
    assert httpx.get(f"{tenants.internal_url}/v1/batches", timeout=10).status_code == 404


REFUSED_URLS = [
    ("loopback", "http://127.0.0.1:{port}/in.jsonl"),
    ("loopback by name", "http://localhost:{port}/in.jsonl"),
    ("loopback, IPv4-mapped IPv6", "http://[::ffff:127.0.0.1]:{port}/in.jsonl"),
    ("loopback, hex", "http://0x7f000001:{port}/in.jsonl"),
    ("loopback, IPv4-compatible IPv6", "http://[::7f00:1]:{port}/in.jsonl"),
    ("loopback, NAT64", "http://[64:ff9b::7f00:1]:{port}/in.jsonl"),
    ("cloud metadata, 6to4", "http://[2002:a9fe:a9fe::1]/latest/meta-data/"),
    ("link-local (cloud metadata)", "http://169.254.169.254/latest/meta-data/"),
    ("private", "http://10.10.10.1:6379/"),
    ("a compose service name", "http://redis:6379/"),
    ("a Kubernetes service", "http://minio.app-cognition.svc.cluster.local:9000/batch/x"),
]


@pytest.mark.parametrize(("kind", "template"), REFUSED_URLS, ids=[k for k, _ in REFUSED_URLS])
def test_input_and_webhook_urls_never_reach_internal_addresses(tenants: Tenants, kind: str, template: str) -> None:
    url = template.format(port=tenants.target.port)
    with tenants.http("alice") as http:
        seeds = http.post("/v1/batch", json={"model": "instant", "input_file_url": url})
        assert seeds.status_code == 400, (kind, seeds.text)
        error = seeds.json()["error"]
        assert error["param"] == "input_file_url" and url in error["message"], error
        hook = http.post(
            "/v1/batch",
            json={"model": "instant", "input_file_url": "s3://batch-tenants/none.jsonl", "webhook_url": url},
        )
        assert hook.status_code == 400 and hook.json()["error"]["param"] == "webhook_url", (kind, hook.text)
    uploaded = tenants.client("alice").files.create(
        file=("in.jsonl", io.BytesIO(chat_lines(1, model="instant")[0].encode())), purpose="batch"
    )
    with pytest.raises(openai.BadRequestError, match=r"metadata\.webhook_url"):
        tenants.client("alice").batches.create(
            input_file_id=uploaded.id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            metadata={"webhook_url": url},
        )
    assert tenants.target.paths == [], "a refused URL was fetched"


def test_a_redirect_from_an_allowed_url_to_an_internal_one_is_refused(tenants: Tenants) -> None:
    with tenants.http("alice") as http:
        response = http.post("/v1/batch", json={"model": "instant", "input_file_url": f"{tenants.redirector.url}/x"})
    assert response.status_code == 400, response.text
    assert f"127.0.0.1:{tenants.target.port}" in response.json()["error"]["message"]
    assert tenants.redirector.paths == ["/x"]  # the allowlisted host was asked ...
    assert tenants.target.paths == []  # ... and where it pointed was not


def test_s3_inputs_may_name_only_the_batch_bucket(tenants: Tenants) -> None:
    with tenants.http("alice") as http:
        other = http.post("/v1/batch", json={"model": "instant", "input_file_url": "s3://someone-else/in.jsonl"})
    assert other.status_code == 400
    assert "must be in the batch bucket 'batch-tenants'" in other.json()["error"]["message"]
