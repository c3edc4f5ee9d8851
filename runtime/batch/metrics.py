"""Prometheus metrics of the batch service (API gauges are refreshed from Redis at scrape time)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

registry = CollectorRegistry(auto_describe=True)


class RequestTally:
    """The worker's per-request counts as plain ints: a Prometheus counter's inc takes a lock, and four
    per request were ~4% of the worker's CPU (py-spy). Exported as counters when /metrics is scraped."""

    def __init__(self) -> None:
        self.succeeded = self.failed = self.prompt_tokens = self.completion_tokens = 0


class _TallyCollector(Collector):
    def __init__(self, tally: RequestTally) -> None:
        self.tally = tally

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "batch_requests", "Requests finished by the worker, by outcome.", labels=["outcome"]
        )
        requests.add_metric(["succeeded"], self.tally.succeeded)
        requests.add_metric(["failed"], self.tally.failed)
        tokens = CounterMetricFamily("batch_tokens", "Tokens processed by the worker.", labels=["kind"])
        tokens.add_metric(["prompt"], self.tally.prompt_tokens)
        tokens.add_metric(["completion"], self.tally.completion_tokens)
        yield from (requests, tokens)


tally = RequestTally()
registry.register(_TallyCollector(tally))
request_seconds = Histogram(
    "batch_request_duration_seconds",
    "Engine time per request, retries included.",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
    registry=registry,
)
request_retries = Counter("batch_request_retries", "Engine retries of retryable failures.", registry=registry)
jobs_paused = Gauge(
    "batch_jobs_paused", "Jobs this worker holds paused, waiting for the engine or their model.", registry=registry
)
job_pauses = Counter(
    "batch_job_pauses",
    "Pauses of a job for the platform (no attempt counted), by reason: engine_unreachable, engine_unavailable, "
    "model_not_loaded.",
    ["reason"],
    registry=registry,
)
chunks_committed = Counter("batch_chunks_committed", "Chunks whose results reached S3.", registry=registry)
jobs_finished = Counter("batch_jobs_finished", "Jobs the worker ended, by status.", ["status"], registry=registry)
in_flight = Gauge("batch_requests_in_flight", "Requests in the engine window now.", registry=registry)
webhook_deliveries = Counter("batch_webhook_deliveries", "Webhook attempts by result.", ["result"], registry=registry)
queue_depth = Gauge("batch_queue_depth", "Jobs waiting to be claimed.", registry=registry)
jobs_by_status = Gauge("batch_jobs", "Jobs not yet ended, by status.", ["status"], registry=registry)
job_progress = Gauge("batch_job_progress_ratio", "Finished share of each running job.", ["batch_id"], registry=registry)
job_last_progress = Gauge(
    "batch_job_last_progress_timestamp_seconds",
    "When a running job last finished a chunk (alerts on stalled jobs).",
    ["batch_id"],
    registry=registry,
)
model_switches = Counter(
    "batch_model_switches",
    "Model switches of the worker's engine, by method (sleep, restart).",
    ["method"],
    registry=registry,
)
model_switch_seconds = Histogram(
    "batch_model_switch_duration_seconds",
    "Time to switch the engine's model (the unload and the load).",
    buckets=(1, 2.5, 5, 10, 20, 30, 45, 60, 90, 120, 300),
    registry=registry,
)
memory_paused = Gauge(
    "batch_worker_memory_paused",
    "1 while the host's memory guard has paused new work: the worker claims no job.",
    registry=registry,
)
model_loaded = Gauge(
    "batch_model_loaded", "1 for the model the worker's engine has loaded.", ["model"], registry=registry
)
api_requests = Counter(
    "batch_api_requests", "API requests by route and status.", ["route", "status"], registry=registry
)
expiry_deleted = Counter(
    "batch_expiry_deleted_objects",
    "Objects the worker's expiry sweep deleted, by reason: expires_after (the file's own expiry: expires_after, "
    "output_expires_after or the retention it was given) or retention (listed older than resultRetentionDays).",
    ["reason"],
    registry=registry,
)
expiry_deleted_bytes = Counter(
    "batch_expiry_deleted_bytes",
    "Bytes of the objects the expiry sweep deleted whose size it knew (from the listing or the file's record).",
    registry=registry,
)
expiry_errors = Counter(
    "batch_expiry_errors",
    "Expiry sweep failures, by stage: sweep (a sweep ended with an error), delete (a key S3 refused to delete).",
    ["stage"],
    registry=registry,
)
expiry_overdue_age = Gauge(
    "batch_expiry_overdue_age_seconds",
    "Age of the oldest object older than the retention that the last complete listing of the bucket left there, "
    "by prefix (files, batches: the sweep's own; other: the lifecycle rule's only); 0: none.",
    ["prefix"],
    registry=registry,
)
expiry_pass_timestamp = Gauge(
    "batch_expiry_pass_timestamp_seconds",
    "When the expiry sweep last finished listing the whole bucket (any worker of the fleet).",
    registry=registry,
)
