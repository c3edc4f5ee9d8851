"""The batch worker's process: `python -m runtime.batch.worker` (settings from BATCH_* variables).

It claims jobs from the Redis queue and runs them chunk by chunk. Each job is in its module:
- job_loop.py: claim, keep the lease, give a job back on a failure (job-level failures, S3 or Redis
  down, retry with a delay; a job leased more than `job_max_attempts` times in a row without progress
  ends as `failed`), heartbeat, webhooks, scheduled backups;
- chunk_pipeline.py: the window of requests across chunk boundaries, each chunk committed when its
  last request finishes, so after a kill -9 every custom_id appears exactly once;
- pause.py: a job paused (lease kept, nothing counted) while the engine is down or lacks its model;
- finalize.py: the output join and the terminal state;
- worker_http.py: /health and /metrics.
This module builds the engine and runs them.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import signal
from collections.abc import Callable

import uvicorn

from runtime.batch import logs, redis_client
from runtime.batch.engines import Engine
from runtime.batch.job_loop import Worker
from runtime.batch.settings import BatchSettings
from runtime.batch.storage import ObjectStore
from runtime.batch.worker_http import SignalFreeServer, health_app


def make_engine(settings: BatchSettings) -> Engine:
    if settings.engine == "offline":
        from runtime.batch.engines.offline import ModelSpec, OfflineEngine

        return OfflineEngine(
            [ModelSpec(m, settings.weights_of(m), settings.engine_args_of(m)) for m in settings.offered_models]
        )
    from runtime.batch.engines.http import HttpEngine

    if settings.vllm_base_url is None:
        raise ValueError("BATCH_VLLM_BASE_URL is required with BATCH_ENGINE=http")
    key = settings.vllm_api_key.get_secret_value() if settings.vllm_api_key else None
    return HttpEngine(
        str(settings.vllm_base_url),
        priority=settings.vllm_request_priority,
        concurrency=settings.concurrency,
        api_key=key,
    )


def load_factory(path: str) -> Callable[[BatchSettings], Engine]:
    module, _, attr = path.partition(":")
    factory: Callable[[BatchSettings], Engine] = getattr(importlib.import_module(module), attr)
    return factory


async def serve(settings: BatchSettings, engine: Engine) -> None:
    client = redis_client.connect(
        str(settings.redis_url),
        max_connections=settings.redis_max_connections,
        outage_seconds=settings.redis_outage_seconds,
    )
    objects = ObjectStore(settings)
    worker = Worker(settings, engine, client, objects)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.stop)
    server = None
    if settings.worker_metrics_port:
        config = uvicorn.Config(
            health_app(worker),
            host=settings.worker_metrics_host,
            port=settings.worker_metrics_port,
            log_level="warning",
        )
        server = SignalFreeServer(config)
        server_task = asyncio.create_task(server.serve())
    try:
        await worker.run()
    finally:
        if server is not None:
            server.should_exit = True
            await server_task
        await worker.webhooks.close()
        await worker.backup_client.aclose()
        await engine.close()
        await client.aclose()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="vllm-gb10 batch worker (settings from BATCH_* variables)")
    parser.add_argument("--engine-factory", help="module:callable taking BatchSettings (benchmarks, extensions)")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logs.configure("batch-worker", args.log_level)
    settings = BatchSettings()
    engine = load_factory(args.engine_factory)(settings) if args.engine_factory else make_engine(settings)
    asyncio.run(serve(settings, engine))


if __name__ == "__main__":
    main()
