"""free_port hands each xdist worker its own ports, below the kernel's ephemeral range.

CI once lost the demo test to a port probed free and taken before the batch worker bound it.
"""

from __future__ import annotations

import pytest

from harness import servers


def _ports(monkeypatch: pytest.MonkeyPatch, worker: str | None, count: int, n: int = 300) -> set[int]:
    if worker is None:
        monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    else:
        monkeypatch.setenv("PYTEST_XDIST_WORKER", worker)
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", str(count))
    monkeypatch.setattr(servers, "_handed_out", set())
    return {servers.free_port() for _ in range(n)}


def test_two_workers_never_share_a_port_and_stay_below_the_ephemeral_range(monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = _ports(monkeypatch, "gw0", 2), _ports(monkeypatch, "gw1", 2)
    assert not first & second
    assert max(first | second) < servers._ephemeral_floor()
    assert min(first | second) >= servers._PORTS_FLOOR


def test_one_process_is_never_handed_the_same_port_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    assert len(_ports(monkeypatch, None, 1, n=500)) == 500
