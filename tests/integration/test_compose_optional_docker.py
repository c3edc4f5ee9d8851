"""An optional service (the DCGM exporter) that cannot run does not fail a compose deploy, and says so.

The real `up` script (infra.platforms.compose.up_script) runs with bash against the real Docker Engine
and Docker Compose (infra.local.docker_engine: the machine's engine or a private dockerd), on a compose
file rendered from ServiceSpecs as the program renders it. The containers are `sleep`s in an image
imported from the host's own /bin/sleep (no registry is reachable); the one that cannot run is a sleep
given a bad argument, which exits at once, as a DCGM exporter does on a box where DCGM cannot start.
Each test has a compose project (host name) of its own, taken down at the end.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from infra.local.docker_engine import Engine
from infra.platforms.compose import COMPOSE_FILE, down_script, up_script
from infra.render.compose import render_compose
from infra.services import HealthCheck, ServiceSpec
from tests.integration.docker_fixtures import docker_engine, sleep_image

pytestmark = pytest.mark.integration
IMAGE = "vllm-gb10-compose-optional-test-sleep:1"


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    with docker_engine(tmp_path_factory.mktemp("docker-state")) as found:
        sleep_image(found, IMAGE)
        yield found
        subprocess.run(["docker", "rmi", "-f", IMAGE], env=found.env, capture_output=True, timeout=60)


def run(script: str, engine: Engine) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-c", script], env=engine.env, input="", capture_output=True, text=True, timeout=300)


def state(engine: Engine, container: str) -> str:
    done = subprocess.run(
        ["docker", "inspect", "--format", "{{.State.Status}}", container],
        env=engine.env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    return done.stdout.strip() or done.stderr.strip()


@pytest.mark.parametrize("optional", [True, False], ids=["optional", "not-optional"])
def test_an_optional_service_that_cannot_run_leaves_the_deploy_standing(
    engine: Engine, tmp_path: Path, optional: bool
) -> None:
    """The serving service comes up; the exporter that works runs; the one that exits is a warning with its
    own last log line, and the script succeeds. Without the optional mark (the platform before issue 31)
    the same project fails the deploy: the mark is what lets it stand."""
    uid = uuid.uuid4().hex[:8]
    host = f"opt-{uid}"
    check = HealthCheck(("/bin/sleep", "0"), interval_s=1, retries=1, start_period_s=0)
    serving = ServiceSpec(
        name=f"serving-{uid}", image=IMAGE, host=host, command=("/bin/sleep", "3600"), healthcheck=check
    )
    works = replace(serving, name=f"exporter-ok-{uid}", optional=optional)
    bad = ("/bin/sleep", "no-such-interval")  # exits 1 at once, and so does its health check
    fails = replace(works, name=f"exporter-bad-{uid}", command=bad, healthcheck=replace(check, command=bad))
    specs = [replace(s, memory_limit="32m") for s in (serving, works, fails)]
    (tmp_path / COMPOSE_FILE).write_text(render_compose(specs, host, "127.0.0.1"))
    script = up_script(
        str(tmp_path), host, "0" * 64, 30,
        services=tuple(s.name for s in specs), optional=tuple(s.name for s in specs if s.optional),
    )  # fmt: skip
    try:
        done = run(script, engine)
        if optional:
            assert done.returncode == 0, done.stdout + done.stderr
            assert (
                f"warning: {fails.name} did not come up on {host}; it is observability only, so the deploy goes on"
                in done.stderr
            )
            assert "no-such-interval" in done.stderr.split(f"warning: {fails.name}", 1)[1]  # its own last words
            assert f"warning: {works.name}" not in done.stderr
            assert state(engine, f"vllm-gb10-{works.name}") == "running"
        else:
            assert done.returncode != 0
            assert f"services on {host} not healthy" in done.stderr
        assert state(engine, f"vllm-gb10-{serving.name}") == "running"
    finally:
        run(down_script(str(tmp_path), host), engine)
