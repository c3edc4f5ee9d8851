"""OpenAI Batch API objects (files, batches) and the seeds' /v1/batch shapes.

Field names and status values follow OpenAI's API reference so that the official `openai`
client parses every response unchanged.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, Field

ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")


class BatchStatus(StrEnum):
    VALIDATING = "validating"
    IN_PROGRESS = "in_progress"
    FINALIZING = "finalizing"
    COMPLETED = "completed"
    FAILED = "failed"
    EXPIRED = "expired"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({BatchStatus.COMPLETED, BatchStatus.FAILED, BatchStatus.EXPIRED, BatchStatus.CANCELLED})


class Priority(StrEnum):
    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"

    @property
    def rank(self) -> int:
        return {"high": 0, "normal": 1, "low": 2}[self.value]


class FileObject(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    expires_at: int | None = None
    filename: str
    purpose: str
    status: Literal["uploaded", "processed", "error"] = "processed"


class StoredFile(FileObject):
    """A file object as kept in Redis, with the id of the API key that owns it (never sent to clients).

    Records written before files had owners read back with `owner=None`: only admin keys see them.
    """

    owner: str | None = None

    def public(self) -> FileObject:
        return FileObject.model_validate(self.model_dump(exclude={"owner"}))


class BatchError(BaseModel):
    code: str
    message: str
    param: str | None = None
    line: int | None = None
    custom_id: str | None = Field(default=None, exclude=True)  # for the error file's row; not in OpenAI's object


class BatchErrors(BaseModel):
    object: Literal["list"] = "list"
    data: list[BatchError] = Field(default_factory=list)


class RequestCounts(BaseModel):
    total: int = 0
    completed: int = 0
    failed: int = 0


class BatchUsage(BaseModel):
    """OpenAI's Batch.usage: tokens over every request of the job (set when it ends)."""

    input_tokens: int = 0
    input_tokens_details: dict[str, int] = Field(default_factory=lambda: {"cached_tokens": 0})
    output_tokens: int = 0
    output_tokens_details: dict[str, int] = Field(default_factory=lambda: {"reasoning_tokens": 0})
    total_tokens: int = 0


class Batch(BaseModel):
    """OpenAI's batch object; the worker and API keep it in Redis as the job's record."""

    id: str
    object: Literal["batch"] = "batch"
    endpoint: str
    errors: BatchErrors | None = None
    input_file_id: str
    completion_window: str = "24h"
    status: BatchStatus
    output_file_id: str | None = None
    error_file_id: str | None = None
    created_at: int
    in_progress_at: int | None = None
    expires_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    request_counts: RequestCounts = Field(default_factory=RequestCounts)
    metadata: dict[str, str] | None = None
    model: str | None = None
    usage: BatchUsage | None = None
    status_reason: str | None = None  # ours, not OpenAI's: why a job waits (its model is not loaded yet)


class JobPlan(BaseModel):
    """What the API decided at creation and the worker needs; stored beside the batch object."""

    batch_id: str
    model: str
    priority: Priority
    chunks: int
    chunk_size: int  # the first chunks' size; later ones grow (intake.chunk_size_after)
    valid_requests: int
    invalid_lines: int
    webhook_url: str | None = None
    key_id: str
    output_retention_seconds: int | None = None  # output_expires_after; None: the service's retention


class ChunkCheckpoint(BaseModel):
    """Written to Redis once a chunk's output and errors are in S3 (the unit of resumption)."""

    index: int
    output_key: str
    error_key: str
    completed: int
    failed: int
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_seconds: float = 0.0


class FileList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FileObject]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool = False


class Model(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "vllm-gb10"
    loaded: bool | None = None  # ours: a worker has it loaded now (None: no worker reports one)


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Model]


class BatchList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Batch]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool = False


class ApiError(BaseModel):
    message: str
    type: str = "invalid_request_error"
    param: str | None = None
    code: str | None = None
    line: int | None = None


# --- the seeds' API -------------------------------------------------------------------------


METADATA_VALUE_CHARS = 512  # OpenAI's limit on a metadata value; the seeds' job_name is one
URL_CHARS = 2048  # a URL a caller gives (input_file_url, webhook_url): kept with the job


class SeedJobMetadata(BaseModel):
    job_name: str | None = Field(default=None, max_length=METADATA_VALUE_CHARS)
    priority: Priority = Priority.NORMAL


class SeedJobRequest(BaseModel):
    model: str = Field(max_length=256)
    input_file_url: str = Field(
        max_length=URL_CHARS, description="s3://bucket/files/<file id> or http(s) URL of the JSONL input."
    )
    webhook_url: str | None = Field(default=None, max_length=URL_CHARS)
    metadata: SeedJobMetadata = Field(default_factory=SeedJobMetadata)


class SeedJobCreated(BaseModel):
    job_id: str
    status: BatchStatus
    created_at: int
    estimated_completion: int | None


class SeedProgress(BaseModel):
    completed: int
    total: int
    percent: float


class SeedThroughput(BaseModel):
    req_per_sec: float
    estimated_remaining: int | None = Field(description="Seconds, from the job's own rate so far.")


class SeedJobStatus(BaseModel):
    job_id: str
    status: BatchStatus
    created_at: int
    progress: SeedProgress
    throughput: SeedThroughput
    estimated_completion: int | None = Field(
        default=None, description="Epoch seconds; from the fleet's rate and the work ahead of and in this job."
    )
    metadata: dict[str, Any] | None = None


class SeedStats(BaseModel):
    total: int
    successful: int
    failed: int
    avg_response_time: float | None


class SeedResults(BaseModel):
    job_id: str
    results_url: str
    errors_url: str | None
    expires_at: int
    stats: SeedStats
