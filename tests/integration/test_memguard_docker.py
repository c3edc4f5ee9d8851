"""The memory guard sheds through the real Docker Engine, and touches only what it is configured to.

The machine's Docker Engine when one answers, else a private dockerd (infra.local.docker_engine, as
test_build_context_docker.py). The containers are `sleep`s in an image imported here from the host's
own /bin/sleep and libc (no registry is reachable), labelled like our compose services with a compose
project of this test's own (a fresh uuid), so the test stops and removes only what it started. The
guard is the real process (`python -m runtime.memguard`) on that engine's socket, fed a test-only
/proc source the test rewrites.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from harness.metrics import sample_value
from harness.procfiles import ProcFiles
from harness.servers import MemoryGuard, wait_for
from infra.local.docker_engine import Engine
from runtime.memguard.docker_api import PROJECT_LABEL, SERVICE_LABEL, Container, DockerError, Shedder
from tests.integration.docker_fixtures import docker_engine, sleep_image

pytestmark = pytest.mark.integration
SHED = ("ray-worker-t", "batch-worker")  # the guard's shed order
IMAGE = "vllm-gb10-memguard-test-sleep:1"


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    with docker_engine(tmp_path_factory.mktemp("docker-state")) as found:
        yield found
        subprocess.run(["docker", "rmi", "-f", IMAGE], env=found.env, capture_output=True, timeout=60)


def docker(engine: Engine, *args: str, stdin: bytes | None = None) -> str:
    done = subprocess.run(["docker", *args], env=engine.env, input=stdin, capture_output=True, timeout=120)
    assert done.returncode == 0, f"docker {' '.join(args)}: {done.stderr.decode(errors='replace')}"
    return done.stdout.decode().strip()


def socket_path(engine: Engine) -> str:
    assert engine.host.startswith("unix://"), engine.host
    return engine.host.removeprefix("unix://")


@pytest.fixture
def project(engine: Engine) -> Iterator[dict[str, str]]:
    """Containers labelled as services of a compose project of this test's own: service name -> id.
    `redis` is in the project but not in the shed list; `other-ray-worker-t` is a shed-list service of
    another project. Every one is removed at the end."""
    image = sleep_image(engine, IMAGE)
    name = f"memguard-test-{uuid.uuid4().hex[:10]}"
    other = f"{name}-other"
    started: dict[str, str] = {}
    try:
        for key, (proj, service) in {
            "ray-worker-t": (name, "ray-worker-t"),
            "batch-worker": (name, "batch-worker"),
            "redis": (name, "redis"),
            "other-ray-worker-t": (other, "ray-worker-t"),
        }.items():
            started[key] = docker(
                engine, "run", "-d", "--network", "host", "--name", f"{name}-{key}",
                "--label", f"{PROJECT_LABEL}={proj}", "--label", f"{SERVICE_LABEL}={service}",
                image, "/bin/sleep", "3600",
            )  # fmt: skip
        yield {"project": name, **started}
    finally:
        for container in started.values():
            subprocess.run(["docker", "rm", "-f", container], env=engine.env, capture_output=True, timeout=60)


def state(engine: Engine, container: str) -> str:
    return docker(engine, "inspect", "--format", "{{.State.Status}}", container)


def metric(guard: MemoryGuard, name: str, **labels: str) -> float:
    return sample_value(httpx.get(f"{guard.url}/metrics", timeout=5).text, name, **labels) or 0.0


def test_the_guard_stops_its_shed_list_in_order_and_nothing_else(
    engine: Engine, project: dict[str, str], tmp_path: Path
) -> None:
    """MemAvailable at 3 GiB (under the 4 GiB shed threshold) and staying there: the guard stops the Ray
    worker, then (one shed interval later) the batch worker, then says nothing is left. Redis of the same
    project and the Ray worker of another project keep running. Memory recovers: the level goes back to
    OK and the stopped containers stay stopped (started again by an operator, not by the guard)."""
    proc = ProcFiles(tmp_path / "proc")
    proc.write(available_gib=40)
    guard = MemoryGuard(
        tmp_path,
        {
            "MEMGUARD_HOST": "gpu-t",
            "MEMGUARD_PROC_ROOT": str(proc.root),
            "MEMGUARD_INTERVAL_SECONDS": "0.1",
            "MEMGUARD_RECOVER_SECONDS": "0.5",
            "MEMGUARD_SHED_EVERY_SECONDS": "0.5",
            "MEMGUARD_STOP_TIMEOUT_SECONDS": "1",
            "MEMGUARD_DOCKER_SOCKET": socket_path(engine),
            "MEMGUARD_COMPOSE_PROJECT": project["project"],
            "MEMGUARD_SHED_SERVICES": json.dumps(list(SHED)),
        },
    )
    guard.start(timeout=30)
    try:
        assert metric(guard, "memguard_shed_container_stopped", service="ray-worker-t") == 0
        proc.write(available_gib=3)
        wait_for(lambda: state(engine, project["ray-worker-t"]) == "exited", 30, "the Ray worker to be stopped")
        wait_for(lambda: state(engine, project["batch-worker"]) == "exited", 30, "the batch worker to be stopped")
        wait_for(lambda: metric(guard, "memguard_shed_exhausted") == 1, 10, "the guard to say nothing is left")
        assert state(engine, project["redis"]) == "running"  # same project, not in the shed list
        assert state(engine, project["other-ray-worker-t"]) == "running"  # in the list, another project
        assert metric(guard, "memguard_level") == 2
        for service in SHED:
            assert metric(guard, "memguard_actions_total", action="stop", service=service) == 1
            assert metric(guard, "memguard_shed_container_stopped", service=service) == 1
        lines = [json.loads(x) for x in guard.log_path.read_text().splitlines() if x.startswith("{")]
        stops = [(x["shed_service"], x["guard_host"]) for x in lines if x.get("event") == "stop"]
        assert stops == [("ray-worker-t", "gpu-t"), ("batch-worker", "gpu-t")]

        proc.write(available_gib=40)
        wait_for(lambda: metric(guard, "memguard_level") == 0, 15, "the level to recover to ok")
        assert state(engine, project["ray-worker-t"]) == "exited" and state(engine, project["batch-worker"]) == "exited"
        assert metric(guard, "memguard_shed_container_stopped", service="ray-worker-t") == 1  # still alerted
        assert metric(guard, "memguard_action_failures_total", action="stop") == 0
    finally:
        guard.stop()


def test_the_shedder_refuses_a_container_outside_its_list_or_project(engine: Engine, project: dict[str, str]) -> None:
    """Asked to stop the project's Redis under a shed-list name, or another project's Ray worker, the
    shedder checks the container's own labels first and refuses; neither is stopped."""
    shedder = Shedder(socket_path(engine), project["project"], SHED, stop_timeout_s=1)
    try:
        listed = [(c.service, c.id) for c in shedder.containers()]  # in shed order, this project's only
        assert listed == [("ray-worker-t", project["ray-worker-t"]), ("batch-worker", project["batch-worker"])]
        for victim in ("redis", "other-ray-worker-t"):
            with pytest.raises(DockerError, match="refused"):
                shedder.stop(Container(project[victim], "ray-worker-t", "running"))
            assert state(engine, project[victim]) == "running"
        with pytest.raises(DockerError, match="not in the shed list"):
            shedder.stop(Container(project["redis"], "redis", "running"))
    finally:
        shedder.close()
