"""The http engine against a real vLLM OpenAI server (CPU, tiny model) with priority scheduling."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator

import httpx
import openai
import pytest
import redis

from harness.metrics import sample_value
from harness.servers import BatchApi, BatchWorker, VllmServer, batch_env, wait_for
from tests.integration.batch_fixtures import chat_lines

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def vllm_server(tiny_model, tmp_path_factory) -> Iterator[VllmServer]:
    server = VllmServer(tmp_path_factory.mktemp("vllm"), tiny_model)
    server.start(timeout=300)
    yield server
    server.stop()


def retries(worker: BatchWorker) -> float:
    text = httpx.get(f"{worker.url}/metrics").text
    return float(re.search(r"^batch_request_retries_total (\S+)$", text, re.M).group(1))


def test_http_engine_runs_a_job_fails_what_the_model_refuses_and_waits_out_the_engine(
    redis_server, s3_server, vllm_server, tmp_path
) -> None:
    vllm_url = vllm_server.url
    redis.Redis.from_url(redis_server.admin_url).flushdb()
    env = batch_env(
        redis_server, s3_server, s3_bucket="batch-http", engine="http", vllm_base_url=f"{vllm_url}/v1",
        chunk_size="10", concurrency="16", request_max_attempts="3",
    )  # fmt: skip
    api, worker = BatchApi(tmp_path, env), BatchWorker(tmp_path, env)
    api.start()
    worker.start(timeout=60)
    client = openai.OpenAI(base_url=f"{api.url}/v1", api_key=env["BATCH_BOOTSTRAP_API_KEY"], max_retries=0)

    def run(lines: list[str]):
        file_id = client.files.create(file=("in.jsonl", io.BytesIO("\n".join(lines).encode())), purpose="batch").id
        batch = client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h")
        done = wait_for(
            lambda: (b := client.batches.retrieve(batch.id)).status in {"completed", "failed"} and b, 120, "batch"
        )

        def rows(file_id: str | None) -> list[dict]:
            return [json.loads(x) for x in client.files.content(file_id).text.splitlines()] if file_id else []

        return done, rows(done.output_file_id), rows(done.error_file_id)

    try:
        too_long = json.loads(chat_lines(1, prefix="long")[0])
        too_long["body"]["max_tokens"] = 100_000
        odd_ids = ["café-ü", "候補-2", "tab\tand\nnewline"]  # not header-safe: X-Session-ID carries them encoded
        odd = [
            json.dumps({**json.loads(x), "custom_id": i})
            for x, i in zip(chat_lines(3, prefix="u"), odd_ids, strict=True)
        ]
        done, output, errors = run([*chat_lines(45), json.dumps(too_long), *odd])
        assert done.status == "completed"
        assert sorted(r["custom_id"] for r in output) == sorted([f"r{i}" for i in range(45)] + odd_ids)
        assert [(e["custom_id"], e["response"]["status_code"]) for e in errors] == [("long0", 400)]
        assert retries(worker) == 0  # a 400 is final: not retried

        completions = httpx.get(f"{vllm_url}/metrics").text
        assert (sample_value(completions, "vllm:request_success_total") or 0) >= 45  # served by vLLM itself

        vllm_server.kill()  # the server and its engine process (one process group)
        wait_for(lambda: _down(vllm_url), 30, "vLLM to stop")
        lines = "\n".join(chat_lines(3, prefix="down")).encode()
        file_id = client.files.create(file=("in.jsonl", io.BytesIO(lines)), purpose="batch").id
        batch = client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h")

        def paused():
            current = client.batches.retrieve(batch.id)
            return "engine_unreachable" in ((current.model_extra or {}).get("status_reason") or "") and current

        waiting = wait_for(paused, 60, "the job to pause for the engine")
        assert waiting.status == "in_progress" and waiting.request_counts.failed == 0  # paused, not failing
        client.batches.cancel(batch.id)  # an engine that never comes back: the job waits until cancelled
        done = wait_for(lambda: (b := client.batches.retrieve(batch.id)).status == "cancelled" and b, 60, "cancel")
        assert done.request_counts.failed == 0 and done.error_file_id is None
        assert retries(worker) == 0  # the outage counted no attempt
    finally:
        worker.stop()
        api.stop()


def _down(url: str) -> bool:
    try:
        httpx.get(f"{url}/health", timeout=1)
        return False
    except httpx.HTTPError:
        return True
