"""The batch service: OpenAI Batch API (FastAPI) and its worker, wired to Redis, S3 and vLLM.

Variable names follow runtime.batch.settings.BatchSettings (prefix BATCH_).
"""

from __future__ import annotations

import json
from typing import Any, NotRequired, TypedDict

import pulumi

from infra.components.secrets import generated_password
from infra.components.tls import CA_ENV, ServerTls
from infra.components.vllm import with_headroom
from infra.config import BatchServiceSettings
from infra.platforms import ServicePlatform
from infra.services import Exposure, Port, Secret, ServiceSpec, http_health_check, secret_output
from runtime.headroom import Need

WORKER_METRICS_PORT = 8101  # the worker's /health and /metrics
API_INTERNAL_PORT = 8102  # the API's keyless /health and /metrics, on the cluster address only (Prometheus)


class BatchServiceArgs(TypedDict):
    platform: ServicePlatform
    host: str
    api_image: pulumi.Input[str]
    worker_image: pulumi.Input[str]  # runtime image (http engine) or GB10 vLLM image (offline)
    settings: BatchServiceSettings
    model: str  # the default model's served name
    models: list[str]  # every offered model's served name, the default first
    vllm_base_url: str  # the load balancer's internal URL (http engine)
    vllm_api_key: pulumi.Output[str]  # the worker's key for the load balancer (http engine)
    redis_url: pulumi.Output[str]
    s3_endpoint: str
    s3_bucket: str
    s3_access_key: str  # the batch services' scoped user (ObjectStoreServer.batch_*), not the root
    s3_secret_key: pulumi.Output[str]
    backup_access_key: str  # the worker's Redis backups: their own scoped user (ObjectStoreServer.backup_*)
    backup_secret_key: pulumi.Output[str]
    retention_days: int
    model_path: str  # offline engine: the weights the worker loads (HF id or path)
    engine_args: dict[str, Any]  # offline engine: the same sized vLLM arguments as the servers
    model_paths: dict[str, str]  # offline engine: served name -> weights (HF id or path), per offered model
    model_engine_args: dict[str, dict[str, Any]]  # offline engine: served name -> its sized vLLM arguments
    hf_token: pulumi.Input[str] | None
    redis_maxmemory_bytes: int  # the API refuses new work near it (BATCH_REDIS_MAXMEMORY_BYTES)
    memguard_host: NotRequired[str | None]  # the worker's host's memory guard, whose pause key it obeys
    depends_on: NotRequired[tuple[str, ...]]  # services to wait for first: the bucket set-up, Redis
    tls: NotRequired[ServerTls | None]  # compose: the API serves TLS itself, the worker trusts its CA
    # offline engine: what its host must have available before the worker loads a model (the largest offered
    # model's need: it holds one at a time), checked by runtime.headroom before the worker starts
    headroom: NotRequired[Need | None]


class BatchService(pulumi.ComponentResource):
    url: str
    internal_url: str
    api_key: pulumi.Output[str]

    def __init__(self, name: str, args: BatchServiceArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("vllm-gb10:batch:BatchService", name, None, opts)
        platform, settings, host = args["platform"], args["settings"], args["host"]
        tls = args.get("tls")
        self.api_key = generated_password(f"{name}-api-key", self, length=48)
        webhook_secret = generated_password(f"{name}-webhook-secret", self, length=48)
        env = {
            "BATCH_S3_ENDPOINT_URL": args["s3_endpoint"],
            "BATCH_S3_BUCKET": args["s3_bucket"],
            "BATCH_S3_ACCESS_KEY_ID": args["s3_access_key"],
            "BATCH_ENGINE": settings.engine,
            "BATCH_VLLM_BASE_URL": args["vllm_base_url"],
            "BATCH_MODEL": args["model"],
            "BATCH_MODELS": json.dumps(args["models"], sort_keys=True),
            "BATCH_CHUNK_SIZE": str(settings.chunk_size),
            "BATCH_CHUNK_SIZE_MAX": str(settings.chunk_size_max),
            "BATCH_CONCURRENCY": str(settings.concurrency),
            "BATCH_RESULT_RETENTION_DAYS": str(args["retention_days"]),
            "BATCH_VLLM_REQUEST_PRIORITY": str(settings.request_priority),
            "BATCH_MODEL_WAIT_SECONDS": str(settings.model_wait_seconds),
            "BATCH_WORKER_METRICS_PORT": str(WORKER_METRICS_PORT),
            "BATCH_REDIS_MAXMEMORY_BYTES": str(args["redis_maxmemory_bytes"]),
        }
        public, internal = Exposure.PUBLIC, Exposure.INTERNAL
        depends_on = args.get("depends_on", ())
        secrets = (
            Secret("BATCH_REDIS_URL", args["redis_url"]),
            Secret("BATCH_S3_SECRET_ACCESS_KEY", args["s3_secret_key"]),
            Secret("BATCH_BOOTSTRAP_API_KEY", self.api_key),
            Secret("BATCH_WEBHOOK_SECRET", webhook_secret),
        )
        port, api_bind = settings.api_port, platform.bind_address(host, public)
        internal_bind = platform.bind_address(host, internal)
        platform.deploy(
            ServiceSpec(
                name=f"{name}-api",
                host=host,
                image=args["api_image"],
                command=(
                    *("python", "-m", "runtime.batch.api", "--host", api_bind, "--port", str(port)),
                    *("--internal-host", internal_bind, "--internal-port", str(API_INTERNAL_PORT)),
                ),
                environment=env,
                secrets=(*secrets, *(tls.secrets if tls else ())),
                # Public: the API (every route needs a key; /metrics an admin key). Internal: /metrics without one.
                ports=(
                    Port(port, port, public, "http"),
                    Port(API_INTERNAL_PORT, API_INTERNAL_PORT, internal, "metrics"),
                ),
                healthcheck=http_health_check(
                    port,
                    host=platform.probe_address(host, public),
                    python="python",
                    https=tls is not None,
                    interval_s=15,
                    start_period_s=20,
                ),
                depends_on=depends_on,
                memory_limit="2g",
            ),
            parent=self,
        )
        offline = settings.engine == "offline"
        worker_env: dict[str, pulumi.Input[str]] = {
            **env,
            "BATCH_WORKER_METRICS_HOST": platform.bind_address(host, internal),
            "BATCH_BACKUP_S3_ACCESS_KEY_ID": args["backup_access_key"],
        }
        if args.get("memguard_host"):
            worker_env["BATCH_MEMGUARD_HOST"] = str(args.get("memguard_host"))
        if tls:
            worker_env[CA_ENV] = tls.ca_b64  # the load balancer's certificate is the stack CA's
        worker_secrets: tuple[Secret, ...] = (
            *secrets,
            Secret("BATCH_VLLM_API_KEY", args["vllm_api_key"]),
            Secret("BATCH_BACKUP_S3_SECRET_ACCESS_KEY", args["backup_secret_key"]),
        )
        if offline:
            worker_env["BATCH_MODEL_PATH"] = args["model_path"]
            worker_env["BATCH_VLLM_ARGS"] = json.dumps(args["engine_args"], sort_keys=True)
            worker_env["BATCH_MODEL_PATHS"] = json.dumps(args["model_paths"], sort_keys=True)
            worker_env["BATCH_MODEL_VLLM_ARGS"] = json.dumps(args["model_engine_args"], sort_keys=True)
            if args["hf_token"] is not None:
                worker_secrets = (*worker_secrets, Secret("HF_TOKEN", secret_output(args["hf_token"])))
        platform.deploy(
            ServiceSpec(
                name=f"{name}-worker",
                host=host,
                image=args["worker_image"],
                command=with_headroom(
                    ("python3", "-m", "runtime.batch.worker"), args.get("headroom") if offline else None, host
                ),
                environment=worker_env,
                secrets=worker_secrets,
                # On the cluster address: Prometheus scrapes it.
                ports=(Port(WORKER_METRICS_PORT, WORKER_METRICS_PORT, internal, "metrics"),),
                healthcheck=http_health_check(
                    WORKER_METRICS_PORT,
                    host=platform.probe_address(host, internal),
                    python="python3",
                    interval_s=15,
                    start_period_s=900 if offline else 30,
                ),
                depends_on=depends_on,
                gpu=offline,
                memory_limit="100g" if offline else "4g",
                shm_size="16g" if offline else None,
            ),
            parent=self,
        )
        self.url = f"https://{platform.external_address(host, port, f'{name}-api')}/v1"
        # The API's own port, as services in the cluster reach it (the post-deploy check).
        scheme = "https" if tls else "http"
        self.internal_url = f"{scheme}://{platform.internal_address(host, port, f'{name}-api', public)}/v1"
        self.worker_service = f"{name}-worker"
        self.metrics_targets = {
            "batch-api": platform.internal_address(host, API_INTERNAL_PORT, f"{name}-api"),
            "batch-worker": platform.internal_address(host, WORKER_METRICS_PORT, f"{name}-worker"),
        }
        self.register_outputs({"url": self.url})
