"""The batch service end to end: real redis-server, moto S3, vLLM CPU in the worker (offline engine).

The official `openai` client drives the OpenAI endpoints; httpx drives the seeds' /v1/batch.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import boto3
import httpx
import openai
import pytest
import redis
import redis.asyncio as redis_async

from harness.metrics import sample_value
from harness.servers import BatchApi, BatchWorker, batch_env, tiny_model_args, wait_for
from runtime.batch.jobs import JobStore
from tests.integration.batch_fixtures import (
    TERMINAL,
    WebhookReceiver,
    chat_lines,
    file_rows,
    run_private,
    wait_batch,
)

pytestmark = pytest.mark.integration


@dataclass
class Stack:
    env: dict[str, str]
    api: BatchApi
    worker: BatchWorker
    client: openai.OpenAI
    webhooks: WebhookReceiver
    log_dir: object

    @property
    def key(self) -> str:
        return self.env["BATCH_BOOTSTRAP_API_KEY"]

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.api.url, headers={"Authorization": f"Bearer {self.key}"}, timeout=30)

    def upload(self, lines: list[str]) -> str:
        data = "\n".join(lines).encode()
        return self.client.files.create(file=("input.jsonl", io.BytesIO(data)), purpose="batch").id

    def submit(self, lines: list[str], **metadata: str):
        metadata.setdefault("webhook_url", f"{self.webhooks.url}/hook")
        return self.client.batches.create(
            input_file_id=self.upload(lines),
            endpoint="/v1/chat/completions",
            completion_window="24h",
            metadata=metadata,
        )

    def wait(self, batch_id: str, timeout: float = 240, statuses=TERMINAL):
        return wait_batch(self.client, batch_id, timeout, statuses)

    def rows(self, file_id: str | None) -> list[dict]:
        return file_rows(self.client, file_id)


@pytest.fixture(scope="module")
def stack(redis_server, s3_server, tiny_model, tmp_path_factory) -> Iterator[Stack]:
    redis.Redis.from_url(redis_server.admin_url).flushdb()
    log_dir = tmp_path_factory.mktemp("batch-offline")
    env = batch_env(
        redis_server,
        s3_server,
        s3_bucket="batch-offline",
        chunk_size="20",
        concurrency="32",
        lease_seconds="3",
        job_retry_base_seconds="0.2",
        storage_retry_seconds="1",
        max_requests_per_job="1000",
        max_file_bytes="1000000",
        url_allowlist="127.0.0.1",  # the webhook receiver and the input server of these tests
        **tiny_model_args(tiny_model),
    )
    api, worker = BatchApi(log_dir, env), BatchWorker(log_dir, env)
    api.start()
    worker.start(timeout=300)
    webhooks = WebhookReceiver(fail_first=1)
    client = openai.OpenAI(base_url=f"{api.url}/v1", api_key=env["BATCH_BOOTSTRAP_API_KEY"], max_retries=0)
    yield Stack(env, api, worker, client, webhooks, log_dir)
    webhooks.close()
    worker.stop()
    api.stop()


def test_openai_client_end_to_end_with_signed_webhook(stack: Stack) -> None:
    batch = stack.submit(chat_lines(90), priority="high")
    assert batch.status == "validating" and batch.request_counts.total == 90
    done = stack.wait(batch.id)
    assert done.status == "completed", done
    assert (done.request_counts.completed, done.request_counts.failed, done.request_counts.total) == (90, 0, 90)
    assert done.error_file_id is None and done.in_progress_at and done.finalizing_at and done.completed_at
    rows = stack.rows(done.output_file_id)
    assert sorted(r["custom_id"] for r in rows) == sorted(f"r{i}" for i in range(90))
    assert all(r["response"]["status_code"] == 200 and r["error"] is None for r in rows)
    assert rows[0]["response"]["body"]["object"] == "chat.completion"
    output = stack.client.files.retrieve(done.output_file_id)
    assert output.purpose == "batch_output" and output.expires_at - output.created_at == 7 * 86400

    # the first delivery got a 500: the webhook arrives on a retry, signed
    delivery = wait_for(
        lambda: next((d for d in stack.webhooks.deliveries if batch.id.encode() in d["body"]), None), 30, "webhook"
    )
    headers, body = delivery["headers"], delivery["body"]
    expected = hmac.new(
        stack.env["BATCH_WEBHOOK_SECRET"].encode(), f"{headers['X-Webhook-Timestamp']}.".encode() + body, hashlib.sha256
    ).hexdigest()
    assert headers["X-Webhook-Signature"] == f"sha256={expected}"
    payload = json.loads(body)
    assert payload["type"] == "batch.completed" and payload["data"]["status"] == "completed"
    assert stack.webhooks.attempts >= 2


def test_list_retrieve_and_delete(stack: Stack) -> None:
    ids = [stack.submit(chat_lines(3, prefix=f"l{n}-")).id for n in range(3)]
    page = stack.client.batches.list(limit=2)
    assert [b.id for b in page.data] == ids[::-1][:2] and page.has_more
    after = stack.client.batches.list(limit=2, after=page.data[-1].id)
    assert after.data[0].id == ids[0]
    for batch_id in ids:
        stack.wait(batch_id)
    file_id = stack.upload(chat_lines(1))
    assert stack.client.files.delete(file_id).deleted
    with pytest.raises(openai.NotFoundError):
        stack.client.files.retrieve(file_id)
    with pytest.raises(openai.NotFoundError):
        stack.client.batches.retrieve("batch_missing")


BAD_LINES = [
    ("{oops", "invalid_json_line"),
    (
        json.dumps({"method": "POST", "url": "/v1/chat/completions", "body": {"model": "tiny-llama"}}),
        "missing_required_parameter",
    ),
    (chat_lines(1, prefix="r")[0], "duplicate_custom_id"),  # r0 is line 1 too
    (chat_lines(1, prefix="u")[0].replace("/v1/chat/completions", "/v1/images"), "invalid_url"),
    (chat_lines(1, prefix="m", model="gpt-4o")[0], "model_not_found"),
    (chat_lines(1, prefix="s")[0].replace('"max_tokens"', '"stream": true, "max_tokens"'), "streaming_unsupported"),
]


@pytest.mark.parametrize(("bad", "code"), BAD_LINES, ids=[code for _, code in BAD_LINES])
def test_a_bad_line_refuses_the_batch_with_its_line_number(stack: Stack, bad: str, code: str) -> None:
    lines = chat_lines(5)
    lines.insert(3, bad)  # line 4
    file_id = stack.upload(lines)
    before = stack.client.batches.list(limit=100).data
    with pytest.raises(openai.BadRequestError) as refused:
        stack.client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h")
    error = refused.value.body
    assert (error["code"], error["line"]) == (code, 4), error
    assert "line 4" in error["message"]
    assert len(stack.client.batches.list(limit=100).data) == len(before)  # nothing was created


def test_file_limits_and_request_errors(stack: Stack) -> None:
    with pytest.raises(openai.BadRequestError, match=r"limit is 1000000"):
        stack.upload(["x" * 1_000_001])
    with pytest.raises(openai.BadRequestError) as too_many:
        stack.client.batches.create(
            input_file_id=stack.upload(chat_lines(1001)), endpoint="/v1/chat/completions", completion_window="24h"
        )
    assert too_many.value.body["code"] == "too_many_requests" and too_many.value.body["line"] == 1001
    with pytest.raises(openai.BadRequestError, match="endpoint must be one of"):
        stack.client.batches.create(
            input_file_id=stack.upload(chat_lines(1)), endpoint="/v1/completions", completion_window="24h"
        )
    with pytest.raises(openai.BadRequestError, match="purpose"):
        stack.client.files.create(file=("x.jsonl", io.BytesIO(b"{}")), purpose="fine-tune")
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{stack.api.url}/v1", api_key="sk-wrong", max_retries=0).batches.list()


def test_error_file_mode_keeps_every_good_line(stack: Stack) -> None:
    lines = chat_lines(30)
    lines[4] = "{broken"
    lines[9] = chat_lines(1, model="other", prefix="x")[0]
    too_long = json.loads(chat_lines(1, prefix="long")[0])
    too_long["custom_id"], too_long["body"]["max_tokens"] = "long", 100_000
    lines.append(json.dumps(too_long))
    done = stack.wait(stack.submit(lines, invalid_lines="error_file").id)
    assert done.status == "completed"
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (31, 28, 3)
    errors = stack.rows(done.error_file_id)
    by_line = {e["error"]["line"]: e for e in errors}
    assert set(by_line) == {5, 10, 31}
    assert by_line[5]["error"]["code"] == "invalid_json_line" and by_line[5]["custom_id"] is None
    assert by_line[10]["error"]["code"] == "model_not_found" and by_line[10]["custom_id"] == "x0"  # it was read
    assert by_line[31]["custom_id"] == "long" and by_line[31]["response"]["status_code"] == 400
    good = [r["custom_id"] for r in stack.rows(done.output_file_id)]
    assert len(good) == 28 and "r4" not in good and "long" not in good


def test_seeds_api_from_s3_and_http(stack: Stack, tmp_path) -> None:
    s3 = boto3.client(
        "s3",
        endpoint_url=stack.env["BATCH_S3_ENDPOINT_URL"],
        aws_access_key_id="x",
        aws_secret_access_key="x",
        region_name="us-east-1",
    )
    bucket = stack.env["BATCH_S3_BUCKET"]  # s3:// inputs come from the batch bucket only
    s3.put_object(Bucket=bucket, Key="in/candidates.jsonl", Body="\n".join(chat_lines(25)).encode())
    (tmp_path / "web.jsonl").write_text("\n".join(chat_lines(7)))
    stack.webhooks.files_dir = str(tmp_path)
    with stack.http() as http:
        for url, total in [(f"s3://{bucket}/in/candidates.jsonl", 25), (f"{stack.webhooks.url}/web.jsonl", 7)]:
            created = http.post(
                "/v1/batch",
                json={
                    "model": "tiny-llama",
                    "input_file_url": url,
                    "metadata": {"job_name": "score", "priority": "low"},
                },
            )
            assert created.status_code == 200, created.text
            job_id = created.json()["job_id"]
            stack.wait(job_id)
            status = http.get(f"/v1/batch/{job_id}").json()
            assert status["progress"] == {"completed": total, "total": total, "percent": 100.0}
            assert status["throughput"]["req_per_sec"] > 0 and status["metadata"]["job_name"] == "score"
            results = http.get(f"/v1/batch/{job_id}/results").json()
            assert results["stats"]["total"] == total and results["stats"]["successful"] == total
            assert results["stats"]["avg_response_time"] > 0 and results["expires_at"] > time.time() + 6 * 86400
            # an address of this API, fetched with the caller's key (not the S3 server's internal address)
            assert results["results_url"].startswith(f"{stack.api.url}/v1/files/file-")
            assert httpx.get(results["results_url"], timeout=30).status_code == 401
            rows = http.get(results["results_url"]).text.splitlines()
            assert len(rows) == total
        missing = http.post("/v1/batch", json={"model": "tiny-llama", "input_file_url": f"s3://{bucket}/nope.jsonl"})
        assert missing.status_code == 400 and "nope.jsonl" in missing.json()["error"]["message"]
        ftp = http.post("/v1/batch", json={"model": "tiny-llama", "input_file_url": "ftp://x/y"})
        assert ftp.status_code == 400 and "s3://bucket/key" in ftp.json()["error"]["message"]
        wrong_model = http.post(
            "/v1/batch", json={"model": "gpt-4o", "input_file_url": f"s3://{bucket}/in/candidates.jsonl"}
        )
        assert wrong_model.json()["error"]["code"] == "model_not_found"


def test_metrics_health_and_bucket_lifecycle(stack: Stack) -> None:
    def worker_counts() -> tuple[float, float]:
        text = httpx.get(f"{stack.worker.url}/metrics").text
        requests = sample_value(text, "batch_requests_total") or 0.0
        return requests, sample_value(text, "batch_tokens_total", kind="completion") or 0.0

    requests_before, tokens_before = worker_counts()
    assert stack.wait(stack.submit(chat_lines(5, prefix="metrics")).id).status == "completed"
    requests_after, tokens_after = worker_counts()
    assert requests_after - requests_before == 5 and tokens_after > tokens_before  # this job's, counted
    with stack.http() as http:  # the bootstrap key is an admin key
        text = http.get("/metrics").text
    # Gauges set at scrape time (other tests' jobs share this stack, so their values are not asserted).
    assert sample_value(text, "batch_queue_depth") is not None
    assert sample_value(text, "batch_jobs", status="in_progress") is not None  # a gauge of the jobs not yet ended
    assert sample_value(text, "batch_jobs", status="completed") is None  # ended jobs are no gauge
    assert httpx.get(f"{stack.worker.url}/health").json()["ready"] is True
    assert httpx.get(f"{stack.api.url}/health").json()["workers"] >= 1
    s3 = boto3.client("s3", endpoint_url=stack.env["BATCH_S3_ENDPOINT_URL"], aws_access_key_id="x",
                      aws_secret_access_key="x", region_name="us-east-1")  # fmt: skip
    rules = s3.get_bucket_lifecycle_configuration(Bucket="batch-offline")["Rules"]
    assert rules[0]["Expiration"]["Days"] == 7 and rules[0]["Status"] == "Enabled"


def test_cancel_a_running_job_keeps_finished_chunks(stack: Stack) -> None:
    batch = stack.submit(chat_lines(1000, max_tokens=64))
    stack.wait(batch.id, statuses={"in_progress"}, timeout=60)
    wait_for(lambda: stack.client.batches.retrieve(batch.id).request_counts.completed >= 40, 60, "two chunks")
    assert stack.client.batches.cancel(batch.id).status == "cancelling"
    done = stack.wait(batch.id)
    assert done.status == "cancelled" and done.cancelled_at
    ids = [r["custom_id"] for r in stack.rows(done.output_file_id)]
    assert 40 <= len(ids) < 1000 and len(ids) == len(set(ids)) == done.request_counts.completed
    with pytest.raises(openai.ConflictError):
        stack.client.batches.cancel(stack.wait(stack.submit(chat_lines(2)).id).id)


def test_kill_9_mid_job_then_restart_completes_exactly_once(stack: Stack) -> None:
    """Also: a job whose input vanished fails after job_max_attempts leases, with its error."""
    batch = stack.submit(chat_lines(600, max_tokens=32))
    wait_for(lambda: stack.client.batches.retrieve(batch.id).request_counts.completed >= 60, 120, "three chunks")
    stack.worker.kill()
    at_kill = stack.client.batches.retrieve(batch.id).request_counts
    killed_at = at_kill.completed + at_kill.failed  # the requests of the chunks committed before the kill
    assert killed_at < 600, "the job finished before the kill; make it longer"

    poisoned = stack.submit(chat_lines(5, prefix="p"))
    s3 = boto3.client("s3", endpoint_url=stack.env["BATCH_S3_ENDPOINT_URL"], aws_access_key_id="x",
                      aws_secret_access_key="x", region_name="us-east-1")  # fmt: skip
    s3.delete_object(Bucket="batch-offline", Key=f"batches/{poisoned.id}/in/000000.jsonl")

    stack.worker.start(timeout=300)
    done = stack.wait(batch.id)
    assert done.status == "completed"
    ids = [r["custom_id"] for r in stack.rows(done.output_file_id) + stack.rows(done.error_file_id)]
    counts = Counter(ids)
    assert set(counts) == {f"r{i}" for i in range(600)} and max(counts.values()) == 1
    assert done.request_counts.completed + done.request_counts.failed == 600
    # Exactly once is not enough: the restarted worker (fresh counters) must not have redone a chunk that
    # was committed before the kill, only run the others.
    restarted = httpx.get(f"{stack.worker.url}/metrics").text
    assert sample_value(restarted, "batch_requests_total") == 600 - killed_at

    failed = stack.wait(poisoned.id, timeout=120)
    assert failed.status == "failed"
    assert failed.errors.data[-1].code == "job_attempts_exhausted"


def test_a_job_past_its_window_expires(stack: Stack, tmp_path) -> None:
    """BATCH_COMPLETION_WINDOW_SECONDS sets when a job expires: its results are what it finished by then."""
    short = BatchApi(tmp_path, {**stack.env, "BATCH_COMPLETION_WINDOW_SECONDS": "2"})
    short.start()
    try:
        client = openai.OpenAI(base_url=f"{short.url}/v1", api_key=stack.key, max_retries=0)
        file_id = client.files.create(
            file=("in.jsonl", io.BytesIO("\n".join(chat_lines(1000, max_tokens=64)).encode())), purpose="batch"
        ).id
        batch = client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h",
                                      metadata={"webhook_url": f"{stack.webhooks.url}/hook"})  # fmt: skip
    finally:
        short.stop()
    assert batch.expires_at - batch.created_at <= 3
    done = stack.wait(batch.id)
    assert done.status == "expired" and done.expired_at
    assert len(stack.rows(done.output_file_id)) == done.request_counts.completed < 1000
    wait_for(lambda: any(b'"batch.expired"' in d["body"] for d in stack.webhooks.deliveries), 30, "expired webhook")


def test_an_expired_job_keeps_the_results_of_its_finished_chunks(stack: Stack) -> None:
    batch = stack.submit(chat_lines(1000, max_tokens=64))
    wait_for(lambda: stack.client.batches.retrieve(batch.id).request_counts.completed >= 40, 60, "two chunks")
    end_window_now(stack, batch.id)  # as if its window ended here: no clock to race
    done = stack.wait(batch.id)
    assert done.status == "expired"
    ids = [r["custom_id"] for r in stack.rows(done.output_file_id)]
    assert 40 <= len(ids) < 1000 and len(ids) == len(set(ids)) == done.request_counts.completed
    assert set(ids) <= {f"r{i}" for i in range(1000)}


def end_window_now(stack: Stack, batch_id: str) -> None:
    """Move the job's expires_at to now through the job store, as the services' Redis user."""

    async def change() -> None:
        client = redis_async.Redis.from_url(stack.env["BATCH_REDIS_URL"], decode_responses=True)
        try:
            await JobStore(client).update(batch_id, lambda b: b.model_copy(update={"expires_at": int(time.time())}))
        finally:
            await client.aclose()

    run_private(change())
