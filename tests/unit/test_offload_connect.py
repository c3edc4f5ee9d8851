"""runtime.offload.cluster.connect: a `ray://` client server that failed to start on the head is
tried again, and nothing else is. (The real path runs in tests/integration/test_offload.py; this
failure cannot be provoked on demand, so ray.init is replaced here.)"""

from __future__ import annotations

import pytest
import ray

from runtime.offload import cluster

START_FAILED = ConnectionAbortedError(
    "Initialization failure from server:\nRuntimeError: Starting Ray client server failed. See "
    "ray_client_server_23000.err for detailed logs."
)


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    seen: list[str] = []
    monkeypatch.setattr(cluster, "CLIENT_RETRY_BASE_S", 0.0)
    monkeypatch.setattr(ray, "shutdown", lambda: seen.append("shutdown"))
    return seen


def failing(times: int, error: BaseException, calls: list[str]):
    def init(address: str | None = None, **_kwargs: object) -> None:
        calls.append("init")
        if calls.count("init") <= times:
            raise error

    return init


def test_a_client_server_that_failed_to_start_is_tried_again(monkeypatch: pytest.MonkeyPatch, calls: list[str]) -> None:
    monkeypatch.setattr(ray, "init", failing(2, START_FAILED, calls))
    cluster.connect("ray://head:10001")
    assert calls == ["init", "shutdown", "init", "shutdown", "init"]


def test_it_gives_up_after_its_tries_with_rays_own_error(monkeypatch: pytest.MonkeyPatch, calls: list[str]) -> None:
    monkeypatch.setattr(ray, "init", failing(cluster.CLIENT_TRIES, START_FAILED, calls))
    with pytest.raises(ConnectionAbortedError, match="Starting Ray client server failed"):
        cluster.connect("ray://head:10001")
    assert calls.count("init") == cluster.CLIENT_TRIES


def test_other_failures_are_not_retried(monkeypatch: pytest.MonkeyPatch, calls: list[str]) -> None:
    refused = ConnectionAbortedError("Initialization failure from server: permission denied")
    monkeypatch.setattr(ray, "init", failing(1, refused, calls))
    with pytest.raises(ConnectionAbortedError, match="permission denied"):
        cluster.connect("ray://head:10001")
    assert calls == ["init"]
