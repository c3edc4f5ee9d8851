"""Several offered models on one worker: real redis-server, moto S3, vLLM CPU in the worker (offline engine)
with two tiny models. The engine loads one at a time and switches when a job names the other (on CPU, by
restarting vLLM: sleep mode is CUDA only)."""

from __future__ import annotations

import io
import json
import os
import signal
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
import redis

from harness.metrics import sample_value
from harness.servers import TINY_MODEL_VLLM_ARGS, BatchApi, BatchWorker, batch_env, wait_for
from tests.integration.batch_fixtures import chat_lines, file_rows, wait_batch

pytestmark = pytest.mark.integration
MODEL_A, MODEL_B = "tiny-a", "tiny-b"


@dataclass
class Models:
    env: dict[str, str]
    api: BatchApi
    worker: BatchWorker
    client: openai.OpenAI

    def submit(self, model: str, count: int, prefix: str) -> str:
        data = "\n".join(chat_lines(count, model=model, prefix=prefix)).encode()
        file_id = self.client.files.create(file=("in.jsonl", io.BytesIO(data)), purpose="batch").id
        return self.client.batches.create(
            input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
        ).id

    def finished(self, batch_id: str):
        return wait_batch(self.client, batch_id, timeout=300)

    def rows(self, file_id: str | None) -> list[dict]:
        return file_rows(self.client, file_id)

    def switches(self) -> float:
        text = httpx.get(f"{self.worker.url}/metrics").text
        return sample_value(text, "batch_model_switches_total", method="restart") or 0.0


@pytest.fixture(scope="module")
def tiny_model_b(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second tiny Llama, with other weights: what it answers differs from the first's."""
    from runtime.tiny_model import make_tiny_llama

    return make_tiny_llama(tmp_path_factory.mktemp("tiny-llama-b"), seed=1)


@pytest.fixture(scope="module")
def models(redis_server, s3_server, tiny_model, tiny_model_b, tmp_path_factory) -> Iterator[Models]:
    redis.Redis.from_url(redis_server.admin_url).flushdb()
    log_dir = tmp_path_factory.mktemp("batch-models")
    env = batch_env(
        redis_server,
        s3_server,
        s3_bucket="batch-models",
        model=MODEL_A,
        models=json.dumps([MODEL_A, MODEL_B]),
        model_paths=json.dumps({MODEL_A: str(tiny_model), MODEL_B: str(tiny_model_b)}),
        model_vllm_args=json.dumps({MODEL_A: TINY_MODEL_VLLM_ARGS, MODEL_B: TINY_MODEL_VLLM_ARGS}),
        chunk_size="10",
        lease_seconds="3",  # a switch outlasts several leases: the worker must keep renewing it
        job_retry_base_seconds="0.2",
        max_requests_per_job="1000",
    )
    api, worker = BatchApi(log_dir, env), BatchWorker(log_dir, env)
    api.start()
    worker.start(timeout=300)
    client = openai.OpenAI(base_url=f"{api.url}/v1", api_key=env["BATCH_BOOTSTRAP_API_KEY"], max_retries=0)
    yield Models(env, api, worker, client)
    worker.stop()
    api.stop()


def test_jobs_for_a_then_b_then_a_each_run_once_on_their_model(models: Models) -> None:
    before = models.switches()
    for step, model in enumerate([MODEL_A, MODEL_B, MODEL_A]):
        done = models.finished(models.submit(model, 25, prefix=f"s{step}-"))
        assert done.status == "completed", done
        assert done.model == model and done.request_counts.completed == 25
        rows = models.rows(done.output_file_id)
        counts = Counter(row["custom_id"] for row in rows)
        assert set(counts) == {f"s{step}-{i}" for i in range(25)} and max(counts.values()) == 1
        assert {row["response"]["body"]["model"] for row in rows} == {model}  # answered by that model
    assert models.switches() - before == 2  # a -> b and b -> a, each counted
    text = httpx.get(f"{models.worker.url}/metrics").text
    assert sample_value(text, "batch_model_loaded", model=MODEL_A) == 1.0
    assert sample_value(text, "batch_model_loaded", model=MODEL_B) == 0.0
    assert (sample_value(text, "batch_model_switch_duration_seconds_count") or 0) >= 2


def test_a_job_for_a_model_not_loaded_waits_and_says_why(models: Models) -> None:
    """The worker is paused with a loaded (its heartbeat is still fresh): a job for b is queued, and says what
    it waits for; once the worker runs again it switches and the job completes."""
    loaded = models.client.models.list().data
    assert [(m.id, m.model_extra.get("loaded")) for m in loaded] in (
        [(MODEL_A, True), (MODEL_B, False)],
        [(MODEL_A, False), (MODEL_B, True)],
    )
    now_loaded = next(m.id for m in loaded if m.model_extra["loaded"])
    other = MODEL_B if now_loaded == MODEL_A else MODEL_A
    assert models.worker.process is not None
    os.kill(models.worker.process.pid, signal.SIGSTOP)
    try:
        batch_id = models.submit(other, 5, prefix="wait-")
        waiting = models.client.batches.retrieve(batch_id)
        assert waiting.status == "validating"
        assert waiting.model_extra["status_reason"] == (
            f"waiting for model {other!r} to be loaded (loaded now: {now_loaded!r})"
        )
    finally:
        os.kill(models.worker.process.pid, signal.SIGCONT)
    done = models.finished(batch_id)
    assert done.status == "completed" and done.request_counts.completed == 5
    assert done.model_extra.get("status_reason") is None
    assert {(m.id, m.model_extra["loaded"]) for m in models.client.models.list().data} == {
        (other, True),
        (now_loaded, False),
    }


def test_a_model_not_offered_is_refused_naming_the_offered_ones(models: Models) -> None:
    data = "\n".join(chat_lines(2, model="gpt-4o")).encode()
    file_id = models.client.files.create(file=("in.jsonl", io.BytesIO(data)), purpose="batch").id
    with pytest.raises(openai.BadRequestError) as refused:
        models.client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h")
    error = refused.value.body
    assert error["code"] == "model_not_found" and error["line"] == 1
    assert error["message"] == "line 1: model 'gpt-4o' is not offered here (offered: 'tiny-a', 'tiny-b')"
    mixed = "\n".join(chat_lines(1, model=MODEL_A, prefix="x") + chat_lines(1, model=MODEL_B, prefix="y")).encode()
    file_id = models.client.files.create(file=("in.jsonl", io.BytesIO(mixed)), purpose="batch").id
    with pytest.raises(openai.BadRequestError) as refused:
        models.client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h")
    assert refused.value.body["code"] == "mismatched_model"


def test_a_job_cancelled_while_its_model_loads_ends_cancelled_without_running(models: Models) -> None:
    now_loaded = next(m.id for m in models.client.models.list().data if m.model_extra["loaded"])
    other = MODEL_B if now_loaded == MODEL_A else MODEL_A
    batch_id = models.submit(other, 5, prefix="cancel-")
    wait_for(
        lambda: (models.client.batches.retrieve(batch_id).model_extra.get("status_reason") or "").startswith(
            f"loading model {other!r}"
        ),
        60,
        "the worker to start loading the job's model",
        interval=0.1,
    )
    assert models.client.batches.cancel(batch_id).status == "cancelling"
    done = models.finished(batch_id)
    assert done.status == "cancelled" and done.request_counts.completed == 0
