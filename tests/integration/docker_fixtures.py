"""The Docker Engine a test module builds or runs containers on."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import tarfile
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


def sleep_image(engine: Engine, tag: str, extra: tuple[str, ...] = ()) -> str:
    """An image `tag` holding /bin/sleep (and the `extra` programs) with the loader and libraries they link,
    imported from the host's own files (no registry is reachable here); the caller removes it."""
    files: list[str] = []
    for program in ("/bin/sleep", *extra):
        found = subprocess.run(["ldd", program], capture_output=True, text=True, check=True).stdout
        files += [program, *(part for line in found.splitlines() for part in line.split() if part.startswith("/"))]
    files = list(dict.fromkeys(files))
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for path in files:
            tar.add(os.path.realpath(path), arcname=path.lstrip("/"))
    done = subprocess.run(
        ["docker", "import", "-", tag], env=engine.env, input=buffer.getvalue(), capture_output=True, timeout=120
    )
    assert done.returncode == 0, f"docker import {tag}: {done.stderr.decode(errors='replace')}"
    return tag
