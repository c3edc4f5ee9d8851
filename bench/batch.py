"""Batch benchmark: our API + worker against vLLM's own run_batch, on the same file and model.

  python -m bench.batch [--requests 2000] [--max-tokens 16] [--small-jobs 10] [--ceiling 20000]
  python -m bench.batch --scale 100000 [--scale 1000000]   (bench/batch_scale.py: one big job, peaks)

(a) vLLM run_batch: engine start and batch time reported apart (the batch part is the peer).
(b) ours, offline engine, warm: from upload to the output file being downloadable.
Then ten small jobs in a row (run_batch pays an engine start per job; our worker stays warm), and
the orchestration ceiling: API + Redis + worker + S3 with an engine that answers at once.
Everything runs on this machine: redis-server, moto's S3 server, vLLM CPU with a tiny model.
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import openai

from harness.requests import chat_lines
from harness.servers import (
    ROOT,
    TINY_MODEL_VLLM_ARGS,
    BatchApi,
    BatchWorker,
    RedisServer,
    S3Server,
    batch_env,
    tiny_model_args,
    wait_for,
)
from runtime.batch.engines.offline import model_flags
from runtime.tiny_model import make_tiny_llama

MODEL = "tiny-llama"


def engine_flags(model: Path) -> list[str]:
    return model_flags(str(model), MODEL, TINY_MODEL_VLLM_ARGS)


def completion_tokens(rows: list[str]) -> int:
    total = 0
    for row in rows:
        body = (json.loads(row).get("response") or {}).get("body") or {}
        total += (body.get("usage") or {}).get("completion_tokens") or 0
    return total


def vllm_run_batch(model: Path, lines: list[str], work: Path) -> dict:
    source, target = work / "in.jsonl", work / "out.jsonl"
    source.write_text("\n".join(lines) + "\n")
    started = time.perf_counter()
    command = [sys.executable, "-m", "bench.vllm_run_batch_timed", "-i", str(source), "-o", str(target)]
    result = subprocess.run(
        [*command, *engine_flags(model)],
        cwd=ROOT, capture_output=True, text=True, check=True,
    )  # fmt: skip
    wall = time.perf_counter() - started
    timing = json.loads(result.stdout.strip().splitlines()[-1])
    rows = target.read_text().splitlines()
    return {**timing, "wall_s": wall, "rows": len(rows), "tokens": completion_tokens(rows)}


class Ours:
    def __init__(self, client: openai.OpenAI):
        self.client = client

    def run(self, lines: list[str]) -> dict:
        started = time.perf_counter()
        data = ("\n".join(lines) + "\n").encode()
        file_id = self.client.files.create(file=("in.jsonl", io.BytesIO(data)), purpose="batch").id
        batch = self.client.batches.create(
            input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        done = wait_for(
            lambda: (b := self.client.batches.retrieve(batch.id)).status in {"completed", "failed"} and b,
            3600, "batch", interval=0.02,
        )  # fmt: skip
        if done.output_file_id is None:
            raise RuntimeError(f"batch {done.id} ended {done.status} with no output file: {done.errors}")
        rows = self.client.files.content(done.output_file_id).text.splitlines()
        return {"batch_s": time.perf_counter() - started, "rows": len(rows), "tokens": completion_tokens(rows)}


def line(name: str, result: dict, requests: int) -> str:
    rate = requests / result["batch_s"]
    tokens = result["tokens"] / result["batch_s"]
    return f"  {name:<34} {result['batch_s']:8.2f} s  {rate:9.1f} req/s  {tokens:9.1f} tok/s  rows {result['rows']}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--small-jobs", type=int, default=10)
    parser.add_argument("--small-size", type=int, default=20)
    parser.add_argument("--ceiling", type=int, default=20000, help="requests for the instant-engine run (0: skip)")
    parser.add_argument("--concurrency", type=int, default=1024, help="our worker's window of requests in flight")
    parser.add_argument(
        "--scale", type=int, action="append", metavar="N",
        help="only run one job of N requests (at most 1,000,000) on the instant engine; repeat for several N",
    )  # fmt: skip
    args = parser.parse_args()
    if args.scale:
        from bench import batch_scale

        batch_scale.main(args.scale)
        return

    work = Path(tempfile.mkdtemp(prefix="bench-batch-"))
    model = make_tiny_llama(work / "tiny-llama")
    lines = chat_lines(args.requests, max_tokens=args.max_tokens)
    print(f"batch benchmark: {args.requests} chat requests, max_tokens {args.max_tokens}, tiny model on vLLM CPU")

    peer = vllm_run_batch(model, lines, work)
    print("(a) vLLM run_batch")
    print(f"  engine start                        {peer['start_s']:8.2f} s   (whole process {peer['wall_s']:.2f} s)")
    print(line("batch", peer, args.requests))

    redis, s3 = RedisServer(work), S3Server(work)
    servers = [redis, s3]
    try:
        for server in servers:
            server.start()
        env = batch_env(redis, s3, concurrency=str(args.concurrency), **tiny_model_args(model))
        api, worker = BatchApi(work, env), BatchWorker(work, env)
        for server, timeout in ((api, 60), (worker, 300)):
            server.start(timeout=timeout)
            servers.append(server)
        ours = Ours(openai.OpenAI(base_url=f"{api.url}/v1", api_key=env["BATCH_BOOTSTRAP_API_KEY"]))
        ours.run(chat_lines(20, max_tokens=4, prefix="warm"))
        mine = ours.run(lines)
        print("(b) ours: API + Redis + worker (offline engine) + S3, upload to downloadable output")
        print(line("batch", mine, args.requests))
        print(f"  ratio (b)/(a) requests/s            {peer['batch_s'] / mine['batch_s']:8.3f}   target >= 0.95")

        if args.small_jobs:
            small_jobs(model, ours, args, work)
        if args.ceiling:
            worker.stop()
            ceiling(work, env, ours, args, servers)
    finally:
        for server in reversed(servers):
            server.stop()


def small_jobs(model: Path, ours: Ours, args: argparse.Namespace, work: Path) -> None:
    small = chat_lines(args.small_size, max_tokens=args.max_tokens)
    print(f"\n{args.small_jobs} small jobs of {args.small_size} requests in a row")
    cold = [vllm_run_batch(model, small, work)["wall_s"] for _ in range(args.small_jobs)]
    warm = [ours.run(small)["batch_s"] for _ in range(args.small_jobs)]
    print(f"  vLLM run_batch, a process per job   {sum(cold):8.2f} s   ({sum(cold) / len(cold):.2f} s per job)")
    print(f"  ours, warm worker                   {sum(warm):8.2f} s   ({sum(warm) / len(warm):.2f} s per job)")
    print(f"  speed-up                            {sum(cold) / sum(warm):8.1f}x")


def ceiling(work: Path, env: dict, ours: Ours, args: argparse.Namespace, servers: list) -> None:
    instant = BatchWorker(work, env, engine_factory="bench.batch_engines:instant", name="instant-worker")
    instant.start()
    servers.append(instant)
    ceiling_lines = chat_lines(args.ceiling, max_tokens=1)
    result = ours.run(ceiling_lines)
    print(f"\norchestration ceiling: {args.ceiling} requests, engine answers at once (bench.batch_engines)")
    print(line("API + queue + worker + S3", result, args.ceiling) + "   target >= 2000 req/s")


if __name__ == "__main__":
    main()
