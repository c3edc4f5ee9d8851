"""Reaching a Ray cluster: connect (ray.init) with a readable version mismatch, or submit a job
through the Ray Jobs API and follow it to the end.

The Jobs API is Ray's recommended path for long work: the driver runs on the cluster, so a lost
laptop connection does not end the job (a `ray://` client session ends after 30 s without one).
"""

from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

_MISMATCH = re.compile(
    r"The cluster was started with:\s*Ray: (?P<cluster_ray>\S+)\s*Python: (?P<cluster_python>\S+)\s*"
    r"This process on (?P<where>.+?) was started with:\s*Ray: (?P<our_ray>\S+)\s*Python: (?P<our_python>\S+)",
    re.DOTALL,
)
TERMINAL_STATES = {"SUCCEEDED", "FAILED", "STOPPED"}


class RayVersionMismatchError(RuntimeError):
    """Client and cluster run different Ray or Python versions; the message is one sentence."""


def mismatch_sentence(address: str, cluster_ray: str, cluster_python: str, our_ray: str, our_python: str) -> str:
    return (
        f"Ray version mismatch: the cluster at {address} runs Ray {cluster_ray} on Python {cluster_python}, "
        f"this client runs Ray {our_ray} on Python {our_python}; connect from an environment with "
        f"ray=={cluster_ray} and Python {'.'.join(cluster_python.split('.')[:2])}, or submit with "
        "`python -m runtime.offload submit`, which runs the driver on the cluster."
    )


# A `ray://` session starts a server process for this client on the head; on a busy head that start
# can fail ("Starting Ray client server failed"), which says nothing about the caller: try again.
CLIENT_SERVER_START_FAILED = "Starting Ray client server failed"
CLIENT_TRIES = 3
CLIENT_RETRY_BASE_S = 2.0
log = logging.getLogger("runtime.offload")


def connect(address: str | None, **init_kwargs: Any) -> None:
    """ray.init on `address` (None starts a local cluster); a version mismatch becomes one sentence,
    and a `ray://` client server that failed to start on the head is tried again (CLIENT_TRIES)."""
    import ray

    for attempt in range(1, CLIENT_TRIES + 1):
        try:
            _init(ray, address, init_kwargs)
            return
        except ConnectionAbortedError as error:
            if CLIENT_SERVER_START_FAILED not in str(error) or attempt == CLIENT_TRIES:
                raise
            log.warning(
                "Ray client server did not start on %s (try %d of %d); trying again", address, attempt, CLIENT_TRIES
            )
            ray.shutdown()
            time.sleep(CLIENT_RETRY_BASE_S * attempt)


def _init(ray: Any, address: str | None, init_kwargs: dict[str, Any]) -> None:
    try:
        ray.init(address=address, **init_kwargs)
    except RuntimeError as error:
        found = _MISMATCH.search(str(error))
        if found is None:
            raise
        raise RayVersionMismatchError(
            mismatch_sentence(
                address or "local",
                found["cluster_ray"],
                found["cluster_python"],
                found["our_ray"],
                found["our_python"],
            )
        ) from None


@dataclass(frozen=True)
class SubmittedJob:
    job_id: str
    status: str
    log: str


def submit_and_follow(
    address: str,
    entrypoint: str,
    *,
    wait: bool = True,
    poll_seconds: float = 1.0,
    print_log: Callable[[str], None] = lambda text: print(text, end="", flush=True),
) -> SubmittedJob:
    """Submit `entrypoint` through the Jobs API; follow status and logs until it ends (or return at once).

    Nothing secret goes with it: the entrypoint and runtime_env are what the Jobs API and dashboard show.
    The client authenticates with Ray's token from RAY_AUTH_MODE/RAY_AUTH_TOKEN in the environment."""
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(address)
    check_jobs_api_version(address, client)
    job_id = client.submit_job(entrypoint=entrypoint)
    print_log(f"submitted job {job_id} to {address}\n")
    if not wait:
        return SubmittedJob(job_id, str(client.get_job_status(job_id)), "")
    shown = 0
    try:
        while True:
            status = str(client.get_job_status(job_id))
            log = client.get_job_logs(job_id)
            if len(log) > shown:
                print_log(log[shown:])
                shown = len(log)
            if status in TERMINAL_STATES:
                return SubmittedJob(job_id, status, log)
            time.sleep(poll_seconds)  # the Jobs API has no push for status; poll as `ray job submit` does
    except KeyboardInterrupt:
        client.stop_job(job_id)
        print_log(f"\nstopping job {job_id}\n")
        raise


def check_jobs_api_version(address: str, client: Any) -> None:
    """The Jobs API tolerates a different client Ray, but the user should hear about it once.

    The client read the cluster's Ray version while connecting (with the auth token, which a plain
    request would lack); it keeps it in `_server_ray_version`. Without it there is nothing to say.
    """
    import ray

    cluster_ray = getattr(client, "_server_ray_version", None)
    if cluster_ray and cluster_ray != ray.__version__:
        print(
            f"warning: the cluster at {address} runs Ray {cluster_ray}, this client Ray {ray.__version__}; "
            "the job itself runs with the cluster's Ray and Python.",
            file=sys.stderr,
        )
