"""Every Redis key the batch service uses, in one place (as arq keeps its constants).

A test asserts the exact set of keys a finished job leaves behind, so new keys start here.
"""

from __future__ import annotations

PREFIX = "vgb:"

QUEUE = PREFIX + "queue"  # zset batch_id -> priority rank * 1e13 + enqueue ms (lowest first)
DELAYED = PREFIX + "delayed"  # zset batch_id -> ms when it may be claimed again (after a failed attempt)
LEASES = PREFIX + "leases"  # zset batch_id -> ms when the current lease runs out
BATCHES = PREFIX + "batches"  # zset batch_id -> created ms (listing, newest first; pruned of expired ids)
FILES = PREFIX + "files"  # zset file_id -> created ms (an admin's listing; pruned of expired ids on read)
ACTIVE = PREFIX + "active"  # zset batch_id -> created ms: batches not yet ended (what /metrics reads)
WEBHOOKS = PREFIX + "webhooks"  # zset delivery_id -> ms when due (SQS-style visibility timeout)
API_KEYS = PREFIX + "apikeys"  # hash sha256(key) -> JSON {name, created_at}
WORKERS = PREFIX + "workers"  # hash worker_id -> last heartbeat ms (silent for a day: removed)
WORKER_MODELS = PREFIX + "workers:models"  # hash worker_id -> the model its engine has loaded (pruned with WORKERS)
WAKE = PREFIX + "wake"  # list: a token per new job, so idle workers wake at once (BLPOP)
THROUGHPUT = PREFIX + "throughput"  # string: recent requests/s of the fleet (estimates)
# The expiry sweep (runtime.batch.expiry). EXPIRY never expires: it is what says an object must go, so
# it lives until the sweep has deleted the object (then the member is removed).
EXPIRY = PREFIX + "expiry"  # zset S3 key ("files/<id>") -> epoch s when the object expires (expires_after)
EXPIRY_LOCK = PREFIX + "expiry:lock"  # SET NX PX: one worker of the fleet runs each scheduled sweep
EXPIRY_PASS = PREFIX + "expiry:pass"  # hash: the bucket listing in progress (cursor, oldest overdue per prefix)
EXPIRY_RESULT = PREFIX + "expiry:result"  # hash: the last complete listing (at, oldest overdue per prefix)


def batch(batch_id: str) -> str:
    """The OpenAI batch object (JSON)."""
    return f"{PREFIX}batch:{batch_id}"


def plan(batch_id: str) -> str:
    """The JobPlan (JSON) the API decided at creation."""
    return f"{PREFIX}batch:{batch_id}:plan"


def job(batch_id: str) -> str:
    """Hash: score (queue position), fence (increments per lease), attempts (leases in a row without
    progress), progress_at (ms) and progress_fence (the lease of the last commit), completed and failed
    (running totals of the chunks), model (the one its requests name: claims group jobs by model)."""
    return f"{PREFIX}batch:{batch_id}:job"


def chunks(batch_id: str) -> str:
    """Hash: chunk index -> ChunkCheckpoint JSON."""
    return f"{PREFIX}batch:{batch_id}:chunks"


def owner_batches(key_id: str) -> str:
    """Zset batch_id -> created ms: one API key's batches (its listing; pruned of expired ids on read)."""
    return f"{PREFIX}owner:{key_id}:batches"


def owner_files(key_id: str) -> str:
    """Zset file_id -> created ms: one API key's files (its listing; pruned of expired ids on read)."""
    return f"{PREFIX}owner:{key_id}:files"


def file(file_id: str) -> str:
    return f"{PREFIX}file:{file_id}"


def webhook(delivery_id: str) -> str:
    return f"{PREFIX}webhook:{delivery_id}"


def claim_call(call_id: str) -> str:
    """String, a minute: what one claim call leased ([id, fence, attempts] JSON), so a retry of the same
    call (a reply lost with its connection) answers the same instead of leasing a second job."""
    return f"{PREFIX}claim:{call_id}"


def rate_limit(key_id: str, minute: int) -> str:
    return f"{PREFIX}ratelimit:{key_id}:{minute}"


def stats(batch_id: str) -> str:
    """JSON {avg_response_time, prompt_tokens, completion_tokens} written when a job finishes."""
    return f"{PREFIX}batch:{batch_id}:stats"


def memory_pause(host: str) -> str:
    """String, expiring: while it exists the batch workers on `host` claim no job (the host's memory
    guard, runtime.memguard, holds it: set and renewed every sample while the host is short of memory,
    with an expiry a few samples long, deleted when memory recovers). Its value is JSON {level (pause or
    shed), reason, at (unix s)}, for the operator; the workers read only whether it exists."""
    return f"{PREFIX}memguard:pause:{host}"
