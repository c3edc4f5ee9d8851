"""The offload tests' real Postgres, started once per session (each module starts its Ray head)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from harness.servers import PostgresServer


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    server = PostgresServer(tmp_path_factory.mktemp("postgres"))
    server.start()
    yield server
    server.stop()
