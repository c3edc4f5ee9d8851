"""One way to open Redis for the batch services: a bounded pool that waits, and retries that ride out a restart.

Why: with redis-py's defaults, a job of 30k+ requests ran out of connections (`MaxConnectionsError`,
an unbounded pool meeting many commits at once), and after Redis was SIGKILLed and restarted the
pooled connections were dead: ten quick retries (at most 1 s apart) were spent before Redis had
loaded its AOF, and the job attempt failed. Here the pool is bounded and a caller waits for a
connection (back-pressure, not an error), and a command is retried on connection errors, timeouts
and "loading" replies for about `outage_seconds`, reconnecting each time.

Transactions with WATCH are not retried by redis-py (the watch is lost with the connection); the
job store retries those itself with `transient_retry`.
"""

from __future__ import annotations

import logging

import redis.asyncio as redis
from redis.asyncio.connection import BlockingConnectionPool
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import BusyLoadingError, ConnectionError, TimeoutError
from tenacity import AsyncRetrying, before_sleep_log, retry_if_exception_type, stop_after_delay
from tenacity import wait_exponential_jitter as jitter

from runtime.batch.keys import PREFIX

# The Redis user the batch services log in as in the stacks (infra.components.redis makes it), and
# all it may do: the batch keys only, data commands only (no CONFIG, ACL, FLUSHALL, KEYS, DEBUG,
# MODULE, REPLICAOF, SHUTDOWN: Redis's @admin and @dangerous), but RESTORE for the backup's restore.
BATCH_ACL_USER = "batch"
BATCH_ACL_RULES = (f"~{PREFIX}*", "resetchannels", "+@all", "-@admin", "-@dangerous", "+restore")
# The memory guards' user (runtime.memguard): its own keys only, and only what it does with them (set
# with an expiry, delete) plus PING; redis-py's CLIENT SETINFO at connect is refused and ignored.
MEMGUARD_ACL_USER = "memguard"
MEMGUARD_ACL_RULES = (f"~{PREFIX}memguard:*", "resetchannels", "-@all", "+set", "+del", "+ping")

TRANSIENT = (ConnectionError, TimeoutError, BusyLoadingError)
BACKOFF_CAP_S = 2.0
log = logging.getLogger("runtime.batch.redis")


class LoggedBackoff(ExponentialWithJitterBackoff):
    """redis-py's jittered backoff, and a warning when a command starts retrying (an outage shows in the log)."""

    def compute(self, failures: int) -> float:
        if failures == 1 or failures % 10 == 0:
            log.warning("Redis unreachable or loading (try %d of this command); retrying", failures)
        return super().compute(failures)


def connect(
    url: str,
    *,
    max_connections: int = 64,
    outage_seconds: float = 60.0,
    decode: bool = True,
    pool_wait_seconds: float | None = None,
) -> redis.Redis:
    """A client whose commands wait for a free connection and survive a Redis restart of `outage_seconds`."""
    retries = int(outage_seconds / (BACKOFF_CAP_S / 2)) + 5  # a jittered wait averages half the cap
    pool = BlockingConnectionPool.from_url(
        url,
        decode_responses=decode,
        max_connections=max_connections,
        timeout=pool_wait_seconds,  # None: as long as it takes (the worker bounds its commits in flight)
        retry=Retry(LoggedBackoff(base=0.05, cap=BACKOFF_CAP_S), retries),
        retry_on_error=list(TRANSIENT),
        health_check_interval=10,  # a connection idle that long is checked before use
        socket_connect_timeout=5,
        socket_timeout=30,
    )
    return redis.Redis.from_pool(pool)  # owns the pool: aclose() closes it


def transient_retry(outage_seconds: float) -> AsyncRetrying:
    """Retries for a whole WATCH transaction while Redis is briefly away (redis-py cannot replay one)."""
    return AsyncRetrying(
        stop=stop_after_delay(outage_seconds),
        wait=jitter(multiplier=0.05, max=BACKOFF_CAP_S),
        retry=retry_if_exception_type(TRANSIENT),
        before_sleep=before_sleep_log(log, logging.WARNING),
        reraise=True,
    )
