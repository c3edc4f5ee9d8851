"""`python -m harness up`: Redis, S3 (moto), a tiny CPU model, the batch API and worker.

Prints `ready: <base_url> api_key=<key>` once a batch can be submitted, and stops everything
cleanly on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import threading
from pathlib import Path

from harness.servers import BatchApi, BatchWorker, Process, RedisServer, S3Server, batch_env, tiny_model_args


def up(work_dir: Path, api_port: int | None) -> int:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    started: list[Process] = []
    try:
        print(f"logs: {work_dir}", file=sys.stderr, flush=True)
        redis, s3 = RedisServer(work_dir), S3Server(work_dir)
        for store in (redis, s3):
            store.start()
            started.append(store)
        from runtime.tiny_model import make_tiny_llama

        model = make_tiny_llama(work_dir / "tiny-llama")
        env = batch_env(redis, s3, **tiny_model_args(model))
        api = BatchApi(work_dir, env, port=api_port)
        worker = BatchWorker(work_dir, env)
        services: tuple[tuple[Process, float], ...] = ((api, 60), (worker, 300))
        for service, timeout in services:
            service.start(timeout=timeout)
            started.append(service)
        print(f"ready: {api.url}/v1 api_key={env['BATCH_BOOTSTRAP_API_KEY']}", flush=True)
        while not stop.wait(0.5):
            for running in started:
                if not running.running:
                    print(f"{running.name} exited; see {running.log_path}", file=sys.stderr, flush=True)
                    return 1
        return 0
    finally:
        for process in reversed(started):
            process.stop()
        print("stopped", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    up_parser = sub.add_parser("up", help="start everything and wait for Ctrl-C / SIGTERM")
    up_parser.add_argument("--dir", type=Path, help="work directory for logs and data (default: a temp dir)")
    up_parser.add_argument("--port", type=int, help="batch API port (default: a free one)")
    sub.add_parser("demo", help="start everything, run a sample batch with the openai client, stop")
    args = parser.parse_args(argv)
    if args.command == "demo":
        from harness.demo import main as demo

        return demo()
    work_dir = args.dir or Path(tempfile.mkdtemp(prefix="vllm-gb10-local-"))
    work_dir.mkdir(parents=True, exist_ok=True)
    return up(work_dir, args.port)


if __name__ == "__main__":
    sys.exit(main())
