"""Settings of the batch API and worker, read from BATCH_* environment variables.

This class is the contract between infra (which sets the variables in both stacks) and the
services; a test builds it from the environment the stack renders.
"""

from __future__ import annotations

from typing import Literal

from pydantic import AnyHttpUrl, Field, RedisDsn, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class BatchSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BATCH_", extra="ignore", frozen=True)

    redis_url: RedisDsn = Field(description="Queue, job state, checkpoints, rate limits.")
    s3_endpoint_url: AnyHttpUrl = Field(description="MinIO / S3 endpoint for inputs and results.")
    s3_bucket: str = Field(min_length=3)
    s3_access_key_id: str = Field(min_length=1)
    s3_secret_access_key: SecretStr
    engine: Literal["http", "offline"] = "http"
    vllm_base_url: AnyHttpUrl | None = Field(default=None, description="http engine: the load balancer.")
    model: str = Field(min_length=1, description="Model id jobs must name (OpenAI 'model').")
    chunk_size: int = Field(default=100, ge=1)
    concurrency: int = Field(default=64, ge=1)
    result_retention_days: int = Field(default=7, ge=1, le=7)
    bootstrap_api_key: SecretStr = Field(description="Stored hashed at start; clients send it as Bearer.")
    webhook_secret: SecretStr = Field(description="HMAC-SHA256 key for webhook signatures.")
