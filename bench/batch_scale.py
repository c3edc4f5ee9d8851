"""One job of N requests through API + Redis + worker + S3, the engine answering at once.

  python -m bench.batch --scale 100000 [--scale 1000000]

Each N runs on fresh processes, so the peaks are that job's: wall time and req/s from upload to the
output being downloadable; the peak RSS of the API and of the worker (the kernel's VmHWM); Redis's
peak memory (INFO used_memory_peak); the worker's CPU time per request. Targets (issue 17): RSS
under 500 MB each and flat as N grows; the orchestration ceiling at 6,000 req/s or more.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import psutil
import redis

from harness.servers import BatchApi, BatchWorker, RedisServer, S3Server, batch_env, wait_for

RSS_TARGET_MB = 500
RATE_TARGET = 6000


def request_lines(n: int) -> Iterator[bytes]:
    """The input, generated as it is written (a 1M-line file is never held whole here either)."""
    for i in range(n):
        body = {"model": "tiny-llama", "messages": [{"role": "user", "content": f"score candidate {i}"}]}
        row = {"custom_id": f"c{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}
        yield (json.dumps(row) + "\n").encode()


def peak_rss_mb(pid: int) -> float:
    """The process's high-water mark of resident memory (VmHWM), in MB."""
    for row in Path(f"/proc/{pid}/status").read_text().splitlines():
        if row.startswith("VmHWM:"):
            return int(row.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for pid {pid}")


def cpu_seconds(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def run_one(n: int, work: Path) -> dict[str, Any]:
    redis_server, s3 = RedisServer(work), S3Server(work)
    servers: list = [redis_server, s3]
    try:
        for server in servers:
            server.start()
        env = batch_env(
            redis_server, s3, s3_bucket="bench-scale", concurrency="512",
            max_requests_per_job=str(n), max_file_bytes=str(20 * 1024**3), rate_limit_per_minute="1000000",
        )  # fmt: skip
        api = BatchApi(work, env)
        worker = BatchWorker(work, env, engine_factory="bench.batch_engines:instant", name=f"worker-{n}")
        for server in (api, worker):
            server.start(timeout=120)
            servers.append(server)
        client = openai.OpenAI(base_url=f"{api.url}/v1", api_key=env["BATCH_BOOTSTRAP_API_KEY"], timeout=3600)
        with tempfile.TemporaryFile() as source:  # the upload streams from disk
            for row in request_lines(n):
                source.write(row)
            size = source.tell()
            source.seek(0)
            worker_cpu = cpu_seconds(worker.pid)
            started = time.perf_counter()
            file_id = client.files.create(file=("in.jsonl", source), purpose="batch").id
        uploaded = time.perf_counter()
        batch = client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h")
        validated = time.perf_counter()
        done = wait_for(
            lambda: (b := client.batches.retrieve(batch.id)).status in {"completed", "failed"} and b, 7200, "the job"
        )
        ran = time.perf_counter()
        rows = 0
        if done.output_file_id is None:
            raise RuntimeError(f"batch {done.id} ended {done.status} with no output file: {done.errors}")
        with client.files.with_streaming_response.content(done.output_file_id) as response:
            for _ in response.iter_lines():
                rows += 1
        wall = time.perf_counter() - started
        phases = (uploaded - started, validated - uploaded, ran - validated, time.perf_counter() - ran)
        worker_cpu = cpu_seconds(worker.pid) - worker_cpu
        redis_peak = redis.Redis.from_url(redis_server.admin_url).info("memory")["used_memory_peak"] / 1024**2
        return {
            "n": n, "status_ok": done.status == "completed" and rows == n, "file_mb": size / 1024**2,
            "wall_s": wall, "rate": n / wall, "api_mb": peak_rss_mb(api.pid),
            "worker_mb": peak_rss_mb(worker.pid), "redis_mb": redis_peak,
            "worker_cpu_us": worker_cpu / n * 1e6, "phases": "/".join(f"{p:.1f}" for p in phases),
        }  # fmt: skip
    finally:
        for server in reversed(servers):
            server.stop()


def report(results: list[dict[str, Any]]) -> None:
    print(f"\none job of N requests, engine answers at once; targets: RSS < {RSS_TARGET_MB} MB, flat in N")
    print(
        f"  {'N':>9} {'file MB':>8} {'wall s':>8} {'req/s':>8} {'API MB':>8} {'worker MB':>10} "
        f"{'Redis MB':>9} {'worker CPU/req':>15}  ok  upload/intake/run/read s"
    )
    for r in results:
        print(
            f"  {r['n']:>9} {r['file_mb']:8.1f} {r['wall_s']:8.1f} {r['rate']:8.0f} {r['api_mb']:8.0f} "
            f"{r['worker_mb']:10.0f} {r['redis_mb']:9.1f} {r['worker_cpu_us']:12.0f} us  {r['status_ok']}"
            f"  {r['phases']}"
        )
    print(f"  peer: OpenAI's per-job limit is 50,000 requests / 200 MB; req/s target >= {RATE_TARGET}")


def main(sizes: list[int]) -> None:
    if any(n > 1_000_000 or n < 1 for n in sizes):
        raise SystemExit("--scale: N must be between 1 and 1,000,000")
    work = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    report([run_one(n, work) for n in sizes])
