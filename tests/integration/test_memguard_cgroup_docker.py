"""Real memory pressure, confined: the guard pauses when a memory-limited container fills up, and resumes.

A container of this test's own runs with a 256 MiB limit and no swap (`--memory 256m --memory-swap 256m`),
so the memory taken below is charged to that cgroup and the machine itself is never at risk: the most it
can cost is 256 MiB, and past it the kernel reclaims or kills inside that cgroup only. The real guard
(`python -m runtime.memguard`) watches that cgroup (MEMGUARD_CGROUP, runtime.memguard.source.read_cgroup)
with thresholds scaled to it, and holds its pause key in a real Redis as the batch workers read it.

The allocation is `dd` inside the container reading 180 MiB of zeros from the test into one buffer and
holding it while its stdin stays open (the image is imported from the host's own sleep and dd: no
registry is reachable); closing stdin lets dd finish and frees it. The machine's Docker Engine when one
answers, else a private dockerd (infra.local.docker_engine). cgroup v2 or v1, whichever the engine uses
(v1 reports no per-cgroup PSI, so there the guard decides on available memory alone).
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from harness.metrics import sample_value
from harness.servers import MemoryGuard, RedisServer, wait_for
from infra.local.docker_engine import Engine
from runtime.batch import keys
from tests.integration.docker_fixtures import docker_engine, sleep_image

pytestmark = pytest.mark.integration
IMAGE = "vllm-gb10-memguard-cgroup-test:1"
MIB = 1024 * 1024
GIB = 1024 * MIB
LIMIT_MIB, FILL_MIB = 256, 180  # 76 MiB left: under the pause threshold, above the shed one
HOST = "gpu-cgroup"


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    with docker_engine(tmp_path_factory.mktemp("docker-state")) as found:
        sleep_image(found, IMAGE, extra=("/usr/bin/dd",))
        yield found
        subprocess.run(["docker", "rmi", "-f", IMAGE], env=found.env, capture_output=True, timeout=60)


def docker(engine: Engine, *args: str) -> str:
    done = subprocess.run(["docker", *args], env=engine.env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"docker {' '.join(args)}: {done.stderr}"
    return done.stdout.strip()


def memory_cgroup(pid: int) -> Path:
    """The directory of the memory cgroup that process `pid` is in: the unified hierarchy's where the memory
    controller is there (v2), else the v1 memory controller's."""
    lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    unified = Path("/sys/fs/cgroup")
    controllers = unified / "cgroup.controllers"
    if controllers.exists() and "memory" in controllers.read_text().split():
        (path,) = [line.split(":", 2)[2] for line in lines if line.startswith("0::")]
        return unified / path.lstrip("/")
    (path,) = [line.split(":", 2)[2] for line in lines if "memory" in line.split(":", 2)[1].split(",")]
    found = unified / "memory" / path.lstrip("/")
    assert (found / "memory.limit_in_bytes").exists(), f"process {pid}: no memory cgroup found ({lines})"
    return found


@pytest.fixture
def confined(engine: Engine) -> Iterator[tuple[str, Path]]:
    """A 256 MiB, swapless container that only sleeps: (its id, its memory cgroup)."""
    name = f"memguard-cgroup-test-{uuid.uuid4().hex[:10]}"
    cid = docker(
        engine, "run", "-d", "--name", name, "--network", "none",
        "--memory", f"{LIMIT_MIB}m", "--memory-swap", f"{LIMIT_MIB}m", IMAGE, "/bin/sleep", "3600",
    )  # fmt: skip
    try:
        pid = int(docker(engine, "inspect", "--format", "{{.State.Pid}}", cid))
        yield cid, memory_cgroup(pid)
    finally:
        subprocess.run(["docker", "rm", "-f", cid], env=engine.env, capture_output=True, timeout=60)


def metric(guard: MemoryGuard, name: str, **labels: str) -> float:
    return sample_value(httpx.get(f"{guard.url}/metrics", timeout=5).text, name, **labels) or 0.0


def test_the_guard_pauses_while_its_cgroup_fills_and_resumes_once_it_is_freed(
    engine: Engine, confined: tuple[str, Path], redis_server: RedisServer, tmp_path: Path
) -> None:
    cid, cgroup = confined
    admin = redis.Redis.from_url(redis_server.admin_url, decode_responses=True)
    admin.delete(keys.memory_pause(HOST))
    guard = MemoryGuard(
        tmp_path,
        {
            "MEMGUARD_HOST": HOST,
            "MEMGUARD_CGROUP": str(cgroup),
            "MEMGUARD_REDIS_URL": redis_server.memguard_url,
            "MEMGUARD_INTERVAL_SECONDS": "0.1",
            "MEMGUARD_RECOVER_SECONDS": "0.5",
            # The GiB thresholds scaled to a 256 MiB cgroup: pause under 120 MiB, shed under 30, recover over 160.
            "MEMGUARD_PAUSE_AVAILABLE_GIB": str(120 * MIB / GIB),
            "MEMGUARD_SHED_AVAILABLE_GIB": str(30 * MIB / GIB),
            "MEMGUARD_RECOVER_AVAILABLE_GIB": str(160 * MIB / GIB),
        },
    )
    guard.start(timeout=30)
    fill = None
    try:
        # Before: the sleeping container leaves nearly all of its 256 MiB available; the guard is at ok.
        wait_for(lambda: metric(guard, "memguard_mem_available_bytes") > 200 * MIB, 10, "the guard to read the cgroup")
        assert metric(guard, "memguard_level") == 0 and not admin.exists(keys.memory_pause(HOST))

        fill = subprocess.Popen(
            ["docker", "exec", "-i", cid, "/usr/bin/dd", "of=/dev/null", f"bs={FILL_MIB + 8}M", "count=1",
             "iflag=fullblock", "status=none"],
            env=engine.env, stdin=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        assert fill.stdin is not None
        chunk = bytes(MIB)
        for _ in range(FILL_MIB):
            fill.stdin.write(chunk)
        fill.stdin.flush()
        # dd holds 180 MiB of the cgroup's 256: the guard pauses batch claims, and only pauses.
        wait_for(lambda: metric(guard, "memguard_level") == 1, 30, "the guard to pause as the cgroup fills")
        held = metric(guard, "memguard_mem_available_bytes")
        assert 30 * MIB < held < 120 * MIB, held
        pause = json.loads(admin.get(keys.memory_pause(HOST)) or "{}")
        assert pause.get("level") == "pause", pause
        assert metric(guard, "memguard_actions_total", action="pause", service="batch-claims") == 1
        assert metric(guard, "memguard_actions_total", action="resume", service="batch-claims") == 0

        # Freed: dd takes its end of input, finishes and exits; the guard resumes and deletes its key.
        fill.stdin.close()
        assert fill.wait(timeout=60) == 0, fill.stderr.read() if fill.stderr else ""
        wait_for(lambda: metric(guard, "memguard_level") == 0, 30, "the guard to resume once the memory is freed")
        wait_for(lambda: not admin.exists(keys.memory_pause(HOST)), 5, "the guard to delete its pause key")
        assert metric(guard, "memguard_actions_total", action="resume", service="batch-claims") == 1
        assert metric(guard, "memguard_mem_available_bytes") > 160 * MIB
        assert metric(guard, "memguard_read_errors_total") == 0
    finally:
        if fill is not None and fill.poll() is None:
            fill.kill()
            fill.wait(timeout=30)
        guard.stop()
