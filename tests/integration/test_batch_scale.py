"""A job of 100k requests through faults, on the real servers (issue 17): the worker killed with -9,
Redis SIGKILLed and restarted (AOF), ten Redis restarts in a row under load.

The engine answers at once (bench.batch_engines), so what is under test is the orchestration: API,
Redis, worker and S3 (moto's server). For each job: it completes, every custom_id is in the output
exactly once, the request counts a client polls never go down, and no Redis fault used up an attempt.
"""

from __future__ import annotations

import io
import json
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import openai
import pytest

from harness.servers import BatchApi, BatchWorker, RedisServer, S3Server, batch_env, wait_for
from tests.integration.batch_fixtures import chat_lines, counted_job_failures

pytestmark = pytest.mark.integration
BIG_JOB = 100_000
TERMINAL = {"completed", "failed", "expired", "cancelled"}


@dataclass
class Watch:
    """Polls a batch as a client would, from its own thread, and keeps every count it saw."""

    client: openai.OpenAI
    batch_id: str
    seen: list[int] = field(default_factory=list)
    last: object = None
    _stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                batch = self.client.batches.retrieve(self.batch_id)
            except openai.APIError:  # Redis down: the API answers 503, which is part of the test
                self._stop.wait(0.05)
                continue
            self.seen.append(batch.request_counts.completed + batch.request_counts.failed)
            self.last = batch
            if batch.status in TERMINAL:
                return
            self._stop.wait(0.05)

    def done(self) -> int:
        """The newest count seen while the job still runs (0 before the first answer)."""
        return self.seen[-1] if self.seen else 0

    def finished(self, timeout: float) -> object:
        self._thread.join(timeout)
        self._stop.set()
        assert self.last is not None and self.last.status in TERMINAL, f"{self.batch_id} did not end"
        return self.last


@dataclass
class Platform:
    redis: RedisServer
    api: BatchApi
    worker: BatchWorker
    client: openai.OpenAI

    def submit(self, requests: int, prefix: str) -> Watch:
        data = ("\n".join(chat_lines(requests, max_tokens=1, prefix=prefix)) + "\n").encode()
        file_id = self.client.files.create(file=("in.jsonl", io.BytesIO(data)), purpose="batch").id
        batch = self.client.batches.create(
            input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        return Watch(self.client, batch.id)

    def restart_redis(self) -> None:
        self.redis.kill()  # SIGKILL: only what the AOF (appendfsync always) holds survives
        self.redis.start()

    def assert_exactly_once(self, watch: Watch, batch, requests: int, prefix: str) -> None:
        assert batch.status == "completed", batch.errors
        assert batch.request_counts.completed == requests and batch.request_counts.failed == 0
        assert all(b >= a for a, b in zip(watch.seen, watch.seen[1:], strict=False)), "the counts went down"
        rows = self.client.files.content(batch.output_file_id).text.splitlines()
        counts = Counter(json.loads(row)["custom_id"] for row in rows)
        assert len(counts) == requests and set(counts) == {f"{prefix}{i}" for i in range(requests)}
        assert max(counts.values()) == 1, "a request appears twice in the output"


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    logs: Path = tmp_path_factory.mktemp("scale")
    redis, s3 = RedisServer(logs), S3Server(logs)
    redis.start()
    s3.start()
    env = batch_env(
        redis, s3, s3_bucket="batch-scale", concurrency="512", lease_seconds="5", job_retry_base_seconds="0.2",
        max_requests_per_job=str(BIG_JOB), rate_limit_per_minute="100000",
    )  # fmt: skip
    api = BatchApi(logs, env)
    worker = BatchWorker(logs, env, engine_factory="bench.batch_engines:instant", name="instant-worker")
    api.start()
    worker.start()
    client = openai.OpenAI(base_url=f"{api.url}/v1", api_key=env["BATCH_BOOTSTRAP_API_KEY"], max_retries=0)
    yield Platform(redis, api, worker, client)
    worker.stop()
    api.stop()
    s3.stop()
    redis.stop()


def test_100k_requests_through_a_worker_kill_and_a_redis_restart_each_once(platform: Platform) -> None:
    watch = platform.submit(BIG_JOB, "big-")
    wait_for(lambda: watch.done() >= BIG_JOB // 4, 300, "a quarter of the job done")
    platform.worker.kill()  # kill -9 mid-job: its lease runs out, the restarted worker resumes
    platform.worker.start()
    at_kill = watch.done()
    wait_for(lambda: watch.done() >= at_kill + BIG_JOB // 4, 300, "progress after the worker kill")
    assert watch.last.status == "in_progress", "the job ended before the Redis fault; make it longer"
    platform.restart_redis()
    batch = watch.finished(600)
    platform.assert_exactly_once(watch, batch, BIG_JOB, "big-")
    assert counted_job_failures(platform.worker.log_path) == []


def test_ten_redis_restarts_in_a_row_under_load_fail_no_job(platform: Platform) -> None:
    jobs = [(platform.submit(20_000, f"j{n}-"), f"j{n}-") for n in range(3)]
    total = sum(20_000 for _ in jobs)
    for restart in range(10):
        # each restart lands once more work is done, while the jobs still run
        target = total * (restart + 1) // 12
        wait_for(lambda target=target: sum(w.done() for w, _ in jobs) >= target, 300, f"progress, restart {restart}")
        platform.restart_redis()
    for watch, prefix in jobs:
        platform.assert_exactly_once(watch, watch.finished(600), 20_000, prefix)
    assert counted_job_failures(platform.worker.log_path) == []


def test_openai_fidelity_usage_files_listing_models_and_limits(platform: Platform) -> None:
    client = platform.client
    watch = platform.submit(250, "fid-")
    batch = watch.finished(120)
    assert batch.status == "completed"
    # the instant engine reports 8 prompt and 1 completion tokens per request (bench.batch_engines)
    assert (batch.usage.input_tokens, batch.usage.output_tokens, batch.usage.total_tokens) == (2000, 250, 2250)

    assert [m.id for m in client.models.list().data] == ["tiny-llama"]

    files = [
        client.files.create(file=(f"f{i}.jsonl", io.BytesIO(b"{}\n")), purpose="batch").id for i in range(3)
    ]  # created in this order, after every file of the earlier tests
    newest = client.files.list(purpose="batch", limit=2)
    assert [f.id for f in newest.data] == files[::-1][:2] and newest.has_more
    oldest_first = client.files.list(purpose="batch", order="asc", after=files[0], limit=10)
    assert [f.id for f in oldest_first.data] == files[1:]
    assert all(f.purpose == "batch_output" for f in client.files.list(purpose="batch_output").data)

    short = client.files.create(
        file=("short.jsonl", io.BytesIO(b"{}\n")),
        purpose="batch",
        extra_body={"expires_after[anchor]": "created_at", "expires_after[seconds]": "3600"},
    )
    assert short.expires_at == short.created_at + 3600
    with pytest.raises(openai.BadRequestError, match=r"expires_after\.seconds is at most"):
        client.files.create(
            file=("long.jsonl", io.BytesIO(b"{}\n")),
            purpose="batch",
            extra_body={"expires_after[anchor]": "created_at", "expires_after[seconds]": str(30 * 86400)},
        )

    too_many = {f"k{i}": "v" for i in range(17)}  # OpenAI: at most 16 pairs, keys 64, values 512 characters
    for metadata in (too_many, {"k" * 65: "v"}, {"k": "v" * 513}):
        with pytest.raises(openai.BadRequestError) as refused:
            client.batches.create(
                input_file_id=files[0], endpoint="/v1/chat/completions", completion_window="24h", metadata=metadata
            )
        assert refused.value.body["param"].startswith("metadata")


def test_every_error_has_openais_envelope_and_redis_away_is_a_503(platform: Platform) -> None:
    http = platform.client._client  # the openai client's httpx client: base URL and key set
    headers = {"Authorization": f"Bearer {platform.client.api_key}"}
    for method, path, status in (("DELETE", "/v1/batches", 405), ("GET", "/v1/nowhere", 404)):
        response = http.request(method, f"{platform.api.url}{path}", headers=headers)
        assert response.status_code == status
        assert set(response.json()["error"]) >= {"message", "type", "param", "code"}, response.text
    platform.redis.kill()
    try:
        response = http.get(f"{platform.api.url}/v1/batches", headers=headers, timeout=60)
        assert response.status_code == 503 and response.headers["retry-after"]
        assert response.json()["error"]["type"] == "server_error"
    finally:
        platform.redis.start()
