"""Servers for the offload tests: a real Postgres and a one-node Ray cluster, started by fixtures."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from runtime.local.servers import PostgresServer, RayHead


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    server = PostgresServer(tmp_path_factory.mktemp("postgres"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayHead]:
    """One node with 2 CPUs and one declared GPU: tasks that ask for a GPU get scheduled, and the
    job falls back to the CPU libraries because this machine has neither a GPU nor cuML."""
    head = RayHead(tmp_path_factory.mktemp("ray"), num_cpus=2, num_gpus=1)
    head.start(timeout=120)
    yield head
    head.stop()
