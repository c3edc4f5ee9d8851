"""The Docker Engine a test module builds or runs containers on."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.local.docker_engine import Engine, EngineError, ensure_engine, stop_private_engine


@contextlib.contextmanager
def docker_engine(state: Path) -> Iterator[Engine]:
    """The machine's Docker Engine, or a private dockerd kept in `state` and stopped when the block ends;
    with neither, the test fails naming why."""
    try:
        found = ensure_engine(state)
    except EngineError as err:
        pytest.fail(f"this test needs a Docker Engine: {err}")
    try:
        yield found
    finally:
        if found.private:
            stop_private_engine(state)
