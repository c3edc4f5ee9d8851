"""Settings of the batch API and worker, read from BATCH_* environment variables.

This class is the contract between infra (which sets the variables in both stacks) and the
services; a test builds it from the environment the stack renders.
"""

from __future__ import annotations

import json
from typing import Literal

from pydantic import AnyHttpUrl, Field, RedisDsn, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from runtime.batch.urls import UrlPolicy

InvalidLines = Literal["reject", "error_file"]


class BatchSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BATCH_", extra="ignore", frozen=True)

    redis_url: RedisDsn = Field(description="Queue, job state, checkpoints, rate limits.")
    s3_endpoint_url: AnyHttpUrl = Field(description="MinIO / S3 endpoint for inputs and results.")
    s3_bucket: str = Field(min_length=3)
    s3_access_key_id: str = Field(min_length=1)
    s3_secret_access_key: SecretStr
    s3_region: str = "us-east-1"
    # The stacks give the Redis backups their own S3 user (runtime.batch.s3_users): the objects under
    # backups/redis/ only, which the user above may not touch. Unset: the backups use the user above.
    backup_s3_access_key_id: str | None = Field(default=None, min_length=1)
    backup_s3_secret_access_key: SecretStr | None = None
    engine: Literal["http", "offline"] = "http"
    vllm_base_url: AnyHttpUrl | None = Field(default=None, description="http engine: the load balancer.")
    vllm_api_key: SecretStr | None = Field(
        default=None, description="http engine: the worker's own key for the load balancer (Bearer)."
    )
    vllm_request_priority: int = Field(
        default=10,
        description="http engine: vLLM `priority` sent with each request (higher runs later); needs the "
        "servers started with --scheduling-policy priority. 0 sends none.",
    )
    model: str = Field(min_length=1, description="The default model (OpenAI 'model'); loaded first.")
    model_path: str | None = Field(default=None, description="offline engine: weights to load (default: model).")
    vllm_args: dict[str, str | int | float | bool] = Field(
        default_factory=dict, description="offline engine: extra vLLM engine arguments, JSON object."
    )
    models: list[str] = Field(
        default_factory=list,
        description="Every model a batch may name, JSON list (the default model among them); empty: the default only.",
    )
    model_paths: dict[str, str] = Field(
        default_factory=dict, description="offline engine: weights per offered model, JSON object (default: its name)."
    )
    model_vllm_args: dict[str, dict[str, str | int | float | bool]] = Field(
        default_factory=dict,
        description="offline engine: vLLM engine arguments per offered model, JSON object (default: vllm_args).",
    )
    model_switch_after_seconds: float = Field(
        default=600.0,
        ge=0,
        description="Jobs for the loaded model go first; a job for another model waits at most this long "
        "behind them before the worker switches (0: strict queue order).",
    )
    chunk_size: int = Field(
        default=100, ge=1, description="Requests in a job's first chunks; later chunks grow (intake.chunk_size_after)."
    )
    chunk_size_max: int = Field(
        default=1000, ge=1, description="Chunks grow with the job up to this many requests (fewer S3 objects)."
    )
    concurrency: int = Field(default=64, ge=1, description="Requests in flight per worker (the window).")
    request_max_attempts: int = Field(
        default=3,
        ge=1,
        description="Tries per request on retryable errors the engine's own (a failure while the engine is down, "
        "answers 502/503/504 or lacks the model pauses the job instead, not counted).",
    )
    model_wait_seconds: float = Field(
        default=3600.0,
        gt=0,
        description="A job whose model the engine answers without (swapped out, no longer offered) waits this "
        "long, paused, then fails naming the model; an engine out of reach is waited for until the job expires.",
    )
    engine_poll_max_seconds: float = Field(
        default=10.0, gt=0, description="Longest wait between probes of the engine while a job is paused for it."
    )
    job_max_attempts: int = Field(default=5, ge=1, description="Leases of one job before it is failed.")
    job_retry_base_seconds: float = Field(
        default=2.0, gt=0, description="First delay before a failed job is retried (doubles)."
    )
    storage_retry_seconds: float = Field(
        default=120.0, gt=0, description="S3 retries inside a job before it backs off."
    )
    lease_seconds: float = Field(default=30.0, gt=0, description="A dead worker's job returns after this.")
    completion_window_seconds: int = Field(default=86_400, ge=1, description="OpenAI's 24h window.")
    max_requests_per_job: int = Field(
        default=50_000, ge=1, le=10_000_000, description="Requests (lines) in one input file; OpenAI's is 50,000."
    )
    max_file_bytes: int = Field(
        default=200 * 1024 * 1024, ge=1, le=20 * 1024**3, description="Bytes of one uploaded file; OpenAI's is 200 MB."
    )
    max_request_bytes: int = Field(
        default=1024 * 1024,
        ge=1024,
        le=64 * 1024 * 1024,
        description="Bytes of a request body other than a file upload (the JSON of /v1/batches, /v1/batch); "
        "a larger one is refused with 413 before it is read.",
    )
    input_url_timeout_seconds: float = Field(
        default=300.0,
        gt=0,
        description="Longest an input_file_url may take to be read whole, redirects included (a total "
        "deadline, not per read); a slower one is refused with 400.",
    )
    redis_max_connections: int = Field(
        default=64, ge=4, description="Connections per process; callers wait for a free one (back-pressure)."
    )
    redis_outage_seconds: float = Field(
        default=60.0, gt=0, description="How long a Redis command or transaction is retried while Redis is away."
    )
    redis_maxmemory_bytes: int = Field(
        default=0,
        ge=0,
        description="Redis's maxmemory (the stacks set both from redisMaxMemoryPercent); the API refuses new "
        "files and batches with a 503 once Redis uses redis_memory_refuse_ratio of it. 0: no check.",
    )
    redis_memory_refuse_ratio: float = Field(
        default=0.9, gt=0, le=1, description="Share of Redis's maxmemory at which the API refuses new work."
    )
    backup_interval_seconds: float = Field(
        default=3600, ge=0, description="A Redis snapshot to S3 this often (one worker of the fleet takes it); 0: off."
    )
    backup_keep: int = Field(default=24, ge=1, description="Snapshots kept; older ones are deleted.")
    expiry_sweep_seconds: float = Field(
        default=600,
        ge=1,
        le=86_400,
        description="The worker deletes expired results itself this often (one worker of the fleet, by a Redis "
        "lock): files past their expires_after / output_expires_after, and whatever under files/ and batches/ "
        "is older than the retention. The bucket's lifecycle rule stays as a second line. No off switch.",
    )
    expiry_delete_batch: int = Field(
        default=1000, ge=1, le=1000, description="Keys per S3 DeleteObjects call of the expiry sweep (S3 allows 1000)."
    )
    expiry_sweep_max_deletes: int = Field(
        default=10_000, ge=1, description="Objects one expiry sweep deletes at most; the rest wait for the next."
    )
    expiry_sweep_max_listed: int = Field(
        default=100_000,
        ge=1,
        description="Objects one expiry sweep lists at most; a bigger bucket is listed over several sweeps.",
    )
    commits_in_flight: int = Field(
        default=4, ge=1, description="Chunks being written to S3 and Redis at once; more chunks wait to start."
    )
    invalid_lines: InvalidLines = Field(
        default="reject", description="reject: 400 naming the line; error_file: bad lines go to the error file."
    )
    rate_limit_per_minute: int = Field(default=600, ge=1, description="API requests per key per minute.")
    result_retention_days: int = Field(default=7, ge=1, le=7)
    bootstrap_api_key: SecretStr = Field(description="Stored hashed at start; clients send it as Bearer.")
    webhook_secret: SecretStr = Field(
        description="HMAC-SHA256 key for the webhooks of keys without their own secret (the bootstrap key's)."
    )
    webhook_max_attempts: int = Field(default=8, ge=1)
    webhook_concurrency: int = Field(default=16, ge=1, description="Webhook deliveries in flight per worker.")
    webhook_per_receiver: int = Field(
        default=2, ge=1, description="Deliveries in flight to one receiver (scheme, host, port); more wait their turn."
    )
    webhook_deadline_seconds: float = Field(
        default=20.0,
        gt=0,
        lt=60,
        description="Each delivery attempt ends within this, however slowly the receiver answers (then retried).",
    )
    url_allowlist: str = Field(
        default="",
        description="Comma-separated host, host:port or CIDR entries that input_file_url and webhook_url may "
        "reach although they are loopback, link-local, private or cluster-internal (refused by default).",
    )
    worker_metrics_port: int = Field(default=8101, ge=0, le=65535, description="Worker /health and /metrics.")
    memguard_host: str | None = Field(
        default=None,
        min_length=1,
        description="The host whose memory guard (runtime.memguard) this worker obeys: while the guard's "
        "pause key for it exists, the worker claims no job. None: no guard watches its host.",
    )
    worker_metrics_host: str = Field(
        default="0.0.0.0",
        min_length=1,
        description="Address the worker's /health and /metrics listen on (compose: the host's cluster address).",
    )

    @field_validator("vllm_args", "model_paths", "model_vllm_args", mode="before")
    @classmethod
    def _json_object(cls, value: object) -> object:
        if isinstance(value, str):
            return json.loads(value) if value.strip() else {}
        return value

    @model_validator(mode="after")
    def _models_known(self) -> BatchSettings:
        offered = set(self.offered_models)
        if len(offered) != len(self.offered_models):
            raise ValueError(f"BATCH_MODELS names a model twice: {self.models}")
        for name, mapping in (("BATCH_MODEL_PATHS", self.model_paths), ("BATCH_MODEL_VLLM_ARGS", self.model_vllm_args)):
            unknown = sorted(set(mapping) - offered)
            if unknown:
                raise ValueError(f"{name} names {unknown}, which BATCH_MODELS does not offer ({sorted(offered)})")
        return self

    @property
    def offered_models(self) -> tuple[str, ...]:
        """The models a batch may name, the default first."""
        return (self.model, *(m for m in self.models if m != self.model))

    def weights_of(self, model: str) -> str:
        """offline engine: what vLLM loads for this offered model."""
        if model == self.model:
            return self.model_paths.get(model) or self.model_path or model
        return self.model_paths.get(model, model)

    def engine_args_of(self, model: str) -> dict[str, str | int | float | bool]:
        """offline engine: the sized vLLM arguments of this offered model."""
        return self.model_vllm_args.get(model, self.vllm_args)

    @field_validator("url_allowlist")
    @classmethod
    def _valid_allowlist(cls, value: str) -> str:
        UrlPolicy.from_entries(value.split(","))  # raises naming a bad CIDR
        return value

    @property
    def url_policy(self) -> UrlPolicy:
        return UrlPolicy.from_entries(self.url_allowlist.split(","))

    @property
    def retention_seconds(self) -> int:
        return self.result_retention_days * 86_400
