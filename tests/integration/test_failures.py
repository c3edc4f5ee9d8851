"""Failure handling against the real servers (ADR-005): Redis restarted mid-job (AOF), S3 out of
reach for a while, a vLLM backend killed behind the load balancer. For each: the job completes,
every accepted request is in the output exactly once, and nothing fails.

The platform here is the stella shape on loopback: two vLLM CPU servers (tiny model) behind
HAProxy with the stacks' configuration, the batch API and a worker on the http engine, Redis with
AOF, moto's S3 behind a proxy that can cut it off. A worker killed with -9 and restarted is
tested in test_batch_offline.py.
"""

from __future__ import annotations

import io
import json
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest

from bench.lb_harness import Haproxy, render_config
from harness.servers import (
    BatchApi,
    BatchWorker,
    RedisServer,
    S3Server,
    VllmServer,
    batch_env,
    free_port,
    wait_for,
)
from tests.integration.batch_fixtures import chat_lines, counted_job_failures
from tests.integration.faults import TcpProxy

pytestmark = pytest.mark.integration
REQUESTS = 800  # long enough that the fault lands mid-job on two CPU vLLM servers
TERMINAL = {"completed", "failed", "expired", "cancelled"}


@dataclass
class Platform:
    redis: RedisServer
    s3: S3Server
    s3_proxy: TcpProxy
    vllm: list[VllmServer]
    haproxy: Haproxy
    haproxy_log: Path
    api: BatchApi
    worker: BatchWorker
    client: openai.OpenAI

    def submit(self, prefix: str):
        data = "\n".join(chat_lines(REQUESTS, max_tokens=16, prefix=prefix)).encode()
        file_id = self.client.files.create(file=("in.jsonl", io.BytesIO(data)), purpose="batch").id
        return self.client.batches.create(
            input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
        )

    def retrieve(self, batch_id: str):
        """The batch, or None while the API cannot answer (Redis down is part of the test)."""
        try:
            return self.client.batches.retrieve(batch_id)
        except openai.APIError:
            return None

    def wait_progress(self, batch_id: str, at_least: int) -> int:
        batch = wait_for(
            lambda: (b := self.retrieve(batch_id)) and b.request_counts.completed >= at_least and b, 180, "progress"
        )
        assert batch.status == "in_progress", "the job ended before the fault; make it longer"
        return batch.request_counts.completed

    def wait_done(self, batch_id: str):
        return wait_for(lambda: (b := self.retrieve(batch_id)) and b.status in TERMINAL and b, 300, f"{batch_id} ends")

    def worker_troubles(self) -> int:
        """Warnings and errors the worker has logged so far: proof that a fault reached it."""
        lines = [json.loads(x) for x in self.worker.log_path.read_text().splitlines() if x.startswith("{")]
        return sum(1 for x in lines if x["level"] in {"WARNING", "ERROR"})

    def assert_exactly_once(self, batch, prefix: str) -> None:
        assert batch.status == "completed", batch.errors
        rows = [json.loads(x) for x in self.client.files.content(batch.output_file_id).text.splitlines()]
        counts = Counter(row["custom_id"] for row in rows)
        assert set(counts) == {f"{prefix}{i}" for i in range(REQUESTS)}, "an accepted request was lost"
        assert max(counts.values()) == 1, "a request appears twice in the output"
        assert batch.request_counts.completed == REQUESTS and batch.request_counts.failed == 0
        assert batch.error_file_id is None or not self.client.files.content(batch.error_file_id).text.strip()


@pytest.fixture(scope="module")
def platform(tiny_model, tmp_path_factory) -> Iterator[Platform]:
    logs = tmp_path_factory.mktemp("failures")
    redis, s3 = RedisServer(logs), S3Server(logs)
    redis.start()
    s3.start()
    proxy = TcpProxy(s3.port)
    servers = [VllmServer(logs, tiny_model, name=f"vllm-{i}") for i in (1, 2)]
    with ThreadPoolExecutor(2) as pool:  # both engines load at once
        list(pool.map(lambda server: server.start(timeout=300), servers))
    port, stats_port = free_port(), free_port()
    haproxy_log = logs / "haproxy.log"
    config = render_config([s.address for s in servers], port, stats_port, check_interval_ms=500)
    haproxy = Haproxy(config, port, stats_port, log_path=haproxy_log)
    haproxy.wait_status({"vllm1": "UP", "vllm2": "UP"}, timeout=60)
    env = batch_env(
        redis, proxy, s3_bucket="batch-failures", engine="http", vllm_base_url=f"http://127.0.0.1:{port}/v1",
        chunk_size="25", concurrency="16", lease_seconds="3", job_retry_base_seconds="0.2",
        storage_retry_seconds="2", job_max_attempts="30", request_max_attempts="5",
    )  # fmt: skip
    api, worker = BatchApi(logs, env), BatchWorker(logs, env)
    api.start()
    worker.start(timeout=60)
    client = openai.OpenAI(base_url=f"{api.url}/v1", api_key=env["BATCH_BOOTSTRAP_API_KEY"], max_retries=0)
    yield Platform(redis, s3, proxy, servers, haproxy, haproxy_log, api, worker, client)
    worker.stop()
    api.stop()
    haproxy.stop()
    for server in servers:
        server.stop()
    proxy.close()
    s3.stop()
    redis.stop()


def test_redis_killed_and_restarted_mid_job_loses_nothing(platform: Platform) -> None:
    batch = platform.submit("redis-")
    platform.wait_progress(batch.id, at_least=50)
    troubles = platform.worker_troubles()
    platform.redis.kill()  # SIGKILL: only what the AOF (appendfsync always) holds survives
    platform.redis.start()
    platform.assert_exactly_once(platform.wait_done(batch.id), "redis-")
    assert platform.worker_troubles() > troubles, "the worker never noticed Redis going away"


def test_s3_out_of_reach_for_a_while_loses_nothing(platform: Platform) -> None:
    batch = platform.submit("s3-")
    platform.wait_progress(batch.id, at_least=50)
    troubles = platform.worker_troubles()
    platform.s3_proxy.cut()
    # Out of reach past the worker's S3 retries (BATCH_STORAGE_RETRY_SECONDS=2): it gives the job back.
    wait_for(lambda: platform.worker_troubles() > troubles, 120, "the worker to hit the S3 outage")
    wait_for(lambda: "job attempt" in platform.worker.log_path.read_text(), 120, "the job attempt to fail")
    platform.s3_proxy.restore()
    assert platform.s3_proxy.refused > 0
    platform.assert_exactly_once(platform.wait_done(batch.id), "s3-")
    assert counted_job_failures(platform.worker.log_path) == [], "an S3 outage used up the job's attempts"


def test_one_request_can_be_followed_through_the_logs(platform: Platform) -> None:
    """Worker log (JSON: job id, chunk, backends) → HAProxy log (request id, backend)."""
    batch = platform.wait_done(platform.submit("trace-").id)
    row = json.loads(platform.client.files.content(batch.output_file_id).text.splitlines()[0])
    worker_lines = [json.loads(x) for x in platform.worker.log_path.read_text().splitlines() if x.startswith("{")]
    commits = [x for x in worker_lines if x.get("job_id") == batch.id and x["message"].startswith("chunk committed")]
    assert commits and all(isinstance(x["chunk"], int) and x["host"] and x["service"] for x in commits)
    backends = Counter()
    for line in commits:
        backends.update(line.get("backends", {}))
    assert set(backends) == {"vllm1", "vllm2"}, backends  # sessions (custom ids) spread over both
    assert sum(backends.values()) == REQUESTS
    lb_lines = [json.loads(x) for x in platform.haproxy_log.read_text().splitlines() if x.startswith("{")]
    (hit,) = [x for x in lb_lines if x["request_id"] == row["id"]]
    assert hit["backend"] in backends and hit["status"] == 200 and hit["service"] == "lb"


def test_a_vllm_backend_killed_mid_job_loses_nothing(platform: Platform) -> None:
    batch = platform.submit("lb-")
    platform.wait_progress(batch.id, at_least=50)
    victim = platform.vllm[0]
    victim.kill()
    wait_for(lambda: "DOWN" in platform.haproxy.status().values(), 30, "HAProxy to mark the killed backend DOWN")
    platform.assert_exactly_once(platform.wait_done(batch.id), "lb-")
