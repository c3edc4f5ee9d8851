"""The batch API in front of a Redis near its maxmemory (issue #32, item 7): real redis-server started
with the stacks' rendered command (a small maxmemory, noeviction), moto S3 and the API. New files and
batches are refused with a 503 that names the cause; reads go on; and a write Redis itself refuses
(OOM under noeviction) is a 503 naming it too, not a 500."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
import redis

from harness.servers import BatchApi, batch_env
from runtime.batch.keys import PREFIX
from runtime.batch.redis_client import BATCH_ACL_USER
from tests.integration.batch_fixtures import chat_lines
from tests.integration.test_redis_acl import ADMIN_PASSWORD, BATCH_PASSWORD, StackRedis

pytestmark = pytest.mark.integration
MAXMEMORY = 16 * 1024**2


def start_api(log_dir: Path, stack_redis: StackRedis, s3_server, **overrides: str) -> BatchApi:
    url = f"redis://{BATCH_ACL_USER}:{BATCH_PASSWORD}@127.0.0.1:{stack_redis.port}/0"  # as the stacks log in
    env = batch_env(
        SimpleNamespace(url=url), s3_server, s3_bucket="batch-memory", model="instant", engine="http", **overrides
    )
    env["BATCH_VLLM_BASE_URL"] = "http://127.0.0.1:9/v1"
    api = BatchApi(log_dir, env)
    api.start()
    return api


@pytest.fixture(scope="module")
def stack_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackRedis]:
    server = StackRedis(tmp_path_factory.mktemp("redis-memory"), maxmemory=MAXMEMORY)
    server.start()
    yield server
    server.stop()


def upload(api: BatchApi, key: str) -> httpx.Response:
    line = chat_lines(1, model="instant")[0].encode()
    return httpx.post(
        f"{api.url}/v1/files",
        headers={"Authorization": f"Bearer {key}"},
        files={"file": ("in.jsonl", io.BytesIO(line))},
        data={"purpose": "batch"},
        timeout=30,
    )


def fill(stack_redis: StackRedis) -> list[str]:
    """Batch keys written until Redis refuses (noeviction); the operator's client, as a backlog would."""
    admin = redis.Redis(port=stack_redis.port, password=ADMIN_PASSWORD)
    written: list[str] = []
    try:
        for n in range(1000):
            admin.set(f"{PREFIX}backlog:{n}", b"x" * 100_000)
            written.append(f"{PREFIX}backlog:{n}")
    except redis.exceptions.OutOfMemoryError:
        return written
    finally:
        admin.close()
    raise AssertionError("Redis took 100 MB under a 16 MB maxmemory")


def test_near_maxmemory_new_work_is_refused_by_name_and_reads_go_on(stack_redis, s3_server, tmp_path) -> None:
    api = start_api(tmp_path, stack_redis, s3_server, redis_maxmemory_bytes=str(MAXMEMORY))
    key = api.env["BATCH_BOOTSTRAP_API_KEY"]
    written: list[str] = []
    try:
        accepted = upload(api, key)
        assert accepted.status_code == 200, accepted.text
        written = fill(stack_redis)
        refused = upload(api, key)
        assert refused.status_code == 503, refused.text
        error = refused.json()["error"]
        assert error["code"] == "redis_memory_full" and "Redis is near its memory limit" in error["message"]
        assert f"of {MAXMEMORY} bytes of maxmemory" in error["message"] and refused.headers["Retry-After"] == "60"
        for route in ("/v1/batches", "/v1/batch"):  # refused before their bodies are even read
            created = httpx.post(f"{api.url}{route}", headers={"Authorization": f"Bearer {key}"}, json={}, timeout=30)
            assert created.status_code == 503 and created.json()["error"]["code"] == "redis_memory_full", route
        listed = httpx.get(f"{api.url}/v1/files", headers={"Authorization": f"Bearer {key}"}, timeout=30)
        assert listed.status_code == 200 and [f["id"] for f in listed.json()["data"]] == [accepted.json()["id"]]
    finally:
        api.stop()
        drain(stack_redis, written)


def test_a_write_redis_refuses_when_full_is_a_503_naming_it(stack_redis, s3_server, tmp_path) -> None:
    """Without the API's own check (redis_maxmemory_bytes 0), Redis's noeviction refusal reaches the caller.
    The operator lowers maxmemory below what Redis holds: every write is refused, deterministically."""
    api = start_api(tmp_path, stack_redis, s3_server)
    key = api.env["BATCH_BOOTSTRAP_API_KEY"]
    admin = redis.Redis(port=stack_redis.port, password=ADMIN_PASSWORD)
    try:
        assert upload(api, key).status_code == 200
        admin.config_set("maxmemory", 1)
        refused = upload(api, key)
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["code"] == "redis_memory_full"
        assert "memory limit (maxmemory)" in refused.json()["error"]["message"]
    finally:
        admin.config_set("maxmemory", MAXMEMORY)
        admin.close()
        api.stop()


def drain(stack_redis: StackRedis, written: list[str]) -> None:
    if written:
        admin = redis.Redis(port=stack_redis.port, password=ADMIN_PASSWORD)
        admin.delete(*written)
        admin.close()
