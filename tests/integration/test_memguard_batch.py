"""The memory guard pauses the batch worker on its host, and lets it go again (issue 31, item 1).

Real processes: redis-server with the stacks' ACL users, moto's S3, the batch API and worker, and the
guard itself (`python -m runtime.memguard`) logged in as its own Redis user and reading a test-only
source, a /proc-shaped directory the test rewrites (harness.procfiles). The engine is the stand-in
for vLLM's OpenAI server (stand_in_vllm.py), which counts every request it gets.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import redis

from harness.metrics import sample_value
from harness.procfiles import ProcFiles
from harness.servers import BatchApi, BatchWorker, MemoryGuard, RedisServer, S3Server, batch_env, wait_for
from runtime.batch import keys
from tests.integration.batch_fixtures import chat_lines, wait_batch
from tests.integration.stand_in_vllm import StandInVllm

pytestmark = pytest.mark.integration
MODEL = "tiny-llama"
HOST = "gpu-a"  # the guard's host, and the worker's BATCH_MEMGUARD_HOST
REQUESTS = 40


def metric(url: str, name: str, **labels: str) -> float:
    return sample_value(httpx.get(f"{url}/metrics", timeout=5).text, name, **labels) or 0.0


def json_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.startswith("{")]


@dataclass
class Box:
    proc: ProcFiles
    guard: MemoryGuard
    worker: BatchWorker
    endpoint: StandInVllm
    client: openai.OpenAI
    admin: redis.Redis

    def submit(self) -> Any:
        lines = "\n".join(chat_lines(REQUESTS, prefix="m")).encode()
        file_id = self.client.files.create(
            file=("in.jsonl", io.BytesIO(lines), "application/jsonl"), purpose="batch"
        ).id
        return self.client.batches.create(
            input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
        )

    def heartbeat_ms(self) -> int:
        beats = self.admin.hgetall(keys.WORKERS)
        return max((int(v) for v in beats.values()), default=0)


@pytest.fixture
def box(redis_server: RedisServer, s3_server: S3Server, tmp_path: Path) -> Iterator[Box]:
    admin = redis.Redis.from_url(redis_server.admin_url, decode_responses=True)
    admin.flushdb()  # no job of another test is left to claim
    proc = ProcFiles(tmp_path / "proc")
    proc.write(available_gib=40)
    guard = MemoryGuard(
        tmp_path,
        {
            "MEMGUARD_HOST": HOST,
            "MEMGUARD_PROC_ROOT": str(proc.root),
            "MEMGUARD_REDIS_URL": redis_server.memguard_url,
            "MEMGUARD_INTERVAL_SECONDS": "0.1",
            "MEMGUARD_RECOVER_SECONDS": "0.5",
        },
    )
    endpoint = StandInVllm(MODEL)
    env = batch_env(
        redis_server, s3_server, s3_bucket="batch-memguard", engine="http", vllm_base_url=f"{endpoint.url}/v1",
        chunk_size="10", concurrency="8", memguard_host=HOST,
    )  # fmt: skip
    api, worker = BatchApi(tmp_path, env), BatchWorker(tmp_path, env)
    guard.start(timeout=30)
    api.start()
    try:
        worker.start(timeout=60)
        client = openai.OpenAI(base_url=f"{api.url}/v1", api_key=env["BATCH_BOOTSTRAP_API_KEY"], max_retries=0)
        yield Box(proc, guard, worker, endpoint, client, admin)
    finally:
        worker.stop()
        api.stop()
        guard.stop()
        endpoint.close()
        admin.close()


def test_the_worker_claims_nothing_while_its_hosts_guard_pauses_and_runs_the_job_once_memory_recovers(
    box: Box,
) -> None:
    """MemAvailable drops to 6 GiB (under the 8 GiB pause threshold): the guard sets its host's pause key,
    and the worker leaves a new job in the queue for as long as it stays (several of its heartbeats,
    the stand-in asked nothing). MemAvailable back at 40 GiB for the recovery time: the key goes, and
    the job runs to the end. Each step is a JSON line and a counter of the guard's."""
    box.proc.write(available_gib=6, some=3)
    wait_for(lambda: metric(box.worker.url, "batch_worker_memory_paused") == 1, 15, "the worker to see the pause")
    assert metric(box.guard.url, "memguard_level") == 1
    value = json.loads(box.admin.get(keys.memory_pause(HOST)) or "{}")
    assert value["level"] == "pause" and "MemAvailable 6.00 GiB" in value["reason"], value
    assert 0 < box.admin.ttl(keys.memory_pause(HOST)) <= 10  # it expires unless the guard renews it

    batch = box.submit()
    submitted = box.heartbeat_ms()
    wait_for(lambda: box.heartbeat_ms() >= submitted + 2000, 15, "the worker to beat for 2 s more while paused")
    held = box.client.batches.retrieve(batch.id)
    assert held.status == "validating" and sum(box.endpoint.hits.values()) == 0, (held.status, box.endpoint.hits)
    assert box.admin.zscore(keys.QUEUE, batch.id) is not None  # still queued: nobody claimed it

    box.proc.write(available_gib=40)
    wait_for(lambda: not box.admin.exists(keys.memory_pause(HOST)), 5, "the guard to delete its pause key")
    done = wait_batch(box.client, batch.id, timeout=60)
    assert done.status == "completed" and done.request_counts.completed == REQUESTS, done
    assert metric(box.worker.url, "batch_worker_memory_paused") == 0

    assert metric(box.guard.url, "memguard_actions_total", action="pause") == 1
    assert metric(box.guard.url, "memguard_actions_total", action="resume") == 1
    assert metric(box.guard.url, "memguard_transitions_total", from_level="ok", to_level="pause") == 1
    assert metric(box.guard.url, "memguard_transitions_total", from_level="pause", to_level="ok") == 1
    events = [line for line in json_lines(box.guard.log_path) if line.get("event") in {"pause", "resume"}]
    assert [(e["event"], e["guard_host"], e["level"]) for e in events] == [
        ("pause", HOST, "pause"),
        ("resume", HOST, "ok"),
    ]
    assert events[0]["mem_available_bytes"] == 6 * 1024**3
    worker_says = [x["memguard"] for x in json_lines(box.worker.log_path) if "memguard" in x]
    assert worker_says == ["pause", "resume"]
