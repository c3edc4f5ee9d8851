"""The host preflight script, run for real with stand-ins for nvidia-smi and docker on PATH.

The developer and CI machines have no GPU and no Docker engine, so the two commands the script
asks are small scripts that answer as a GB10 host (or a broken one) would.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.components.host import ExpectedMemory, preflight_command
from infra.local.hosts import GB10_MEMINFO_STANDIN
from infra.plan import build_plan
from runtime.kvcache import PROFILES

TOOLS = ("sh", "awk", "df", "grep", "head", "id", "mkdir", "install", "cat")


# What docker 20.10+ prints when the user may not open /var/run/docker.sock (not in the docker group).
SOCKET_DENIED = (
    "permission denied while trying to connect to the Docker daemon socket at unix:///var/run/docker.sock: "
    'Get "http://%2Fvar%2Frun%2Fdocker.sock/v1.24/info": dial unix /var/run/docker.sock: connect: permission denied'
)
NO_DAEMON = "Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?"


def make_path(
    tmp_path: Path, *, gpu_name: str | None, runtimes: str, compose_rc: int = 0, info_error: str | None = None
) -> str:
    """A PATH holding only basic tools and the given stand-ins (gpu_name None: no nvidia-smi; info_error:
    what `docker info` prints to stderr before it exits 1)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in TOOLS:
        (bin_dir / tool).symlink_to(shutil.which(tool))
    if gpu_name is not None:
        (bin_dir / "nvidia-smi").write_text(f"#!/bin/sh\necho '{gpu_name}'\n")
    (bin_dir / "docker").write_text(
        "#!/bin/sh\n"
        f'if [ "$1 $2" = "compose version" ]; then exit {compose_rc}; fi\n'
        + (f"if [ \"$1\" = info ]; then echo '{info_error}' >&2; exit 1; fi\n" if info_error else "")
        + 'case "$3" in *Runtimes*) echo \''
        + runtimes
        + "' ;; *DockerRootDir*) echo "
        + str(tmp_path)
        + " ;; esac\n"
    )
    for stub in bin_dir.iterdir():
        if not stub.is_symlink():
            stub.chmod(0o755)
    return str(bin_dir)


def run_preflight(
    path: str,
    tmp_path: Path,
    *,
    require_gpu: bool = True,
    min_free_gb: int = 1,
    memory: ExpectedMemory | None = None,
    mem_total_kib: int | None = None,
):
    """`mem_total_kib`: the box's MemTotal, in a stand-in /proc/meminfo (None: the script's default path)."""
    script = preflight_command(
        require_gpu=require_gpu,
        min_free_gb=min_free_gb,
        remote_dir=str(tmp_path / "app"),
        stack_dir=str(tmp_path),
        memory=memory,
    )
    env = {"PATH": path}
    if mem_total_kib is not None:
        meminfo = tmp_path / "meminfo"
        meminfo.write_text(f"MemTotal:       {mem_total_kib} kB\nMemFree:        1024 kB\nMemAvailable:   2048 kB\n")
        env["MEMINFO"] = str(meminfo)
    return subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True, check=False)


GOOD_RUNTIMES = '{"nvidia":{"path":"nvidia-container-runtime"},"runc":{"path":"runc"}}'


def test_a_ready_gb10_host_passes_and_gets_its_directory(tmp_path: Path) -> None:
    result = run_preflight(make_path(tmp_path, gpu_name="NVIDIA GB10", runtimes=GOOD_RUNTIMES), tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("preflight ok: gpu='NVIDIA GB10'")
    assert (tmp_path / "app").is_dir()


@pytest.mark.parametrize(
    ("gpu_name", "runtimes", "compose_rc", "min_free_gb", "reason"),
    [
        ("NVIDIA H100 80GB HBM3", GOOD_RUNTIMES, 0, 1, "GPU 'NVIDIA H100 80GB HBM3' does not match GB10"),
        (None, GOOD_RUNTIMES, 0, 1, "nvidia-smi not found"),
        ("NVIDIA GB10", '{"runc":{"path":"runc"}}', 0, 1, "NVIDIA container runtime not registered"),
        ("NVIDIA GB10", GOOD_RUNTIMES, 1, 1, "docker compose plugin missing"),
        ("NVIDIA GB10", GOOD_RUNTIMES, 0, 10**9, "GB free under"),
    ],
)
def test_a_host_that_is_not_ready_fails_with_the_reason(
    tmp_path: Path, gpu_name: str | None, runtimes: str, compose_rc: int, min_free_gb: int, reason: str
) -> None:
    path = make_path(tmp_path, gpu_name=gpu_name, runtimes=runtimes, compose_rc=compose_rc)
    result = run_preflight(path, tmp_path, min_free_gb=min_free_gb)
    assert result.returncode == 1
    assert reason in result.stderr
    assert "preflight ok" not in result.stdout


def test_every_failure_is_reported_not_only_the_first(tmp_path: Path) -> None:
    path = make_path(tmp_path, gpu_name="Quadro", runtimes="{}", compose_rc=1)
    result = run_preflight(path, tmp_path, min_free_gb=10**9)
    assert result.returncode == 1
    assert result.stderr.count("preflight failed:") == 4


def test_a_host_without_the_gpu_role_needs_no_gpu(tmp_path: Path) -> None:
    path = make_path(tmp_path, gpu_name=None, runtimes="{}")
    result = run_preflight(path, tmp_path, require_gpu=False)
    assert result.returncode == 0, result.stderr
    assert "gpu='not required'" in result.stdout


@pytest.mark.parametrize(
    ("info_error", "reason"),
    [
        (
            SOCKET_DENIED,
            "user root is not in the docker group (permission denied on the docker socket): "
            "sudo usermod -aG docker root, then log in again",
        ),
        (NO_DAEMON, "the Docker daemon is not running: sudo systemctl enable --now docker"),
    ],
)
def test_a_docker_that_does_not_answer_is_named_not_blamed_on_the_nvidia_runtime(
    tmp_path: Path, info_error: str, reason: str
) -> None:
    path = make_path(tmp_path, gpu_name="NVIDIA GB10", runtimes=GOOD_RUNTIMES, info_error=info_error)
    result = run_preflight(path, tmp_path)
    assert result.returncode == 1
    assert f"preflight failed: {reason}" in result.stderr
    assert "NVIDIA container runtime" not in result.stderr, "the runtime check needs a daemon that answers"
    assert result.stderr.count("preflight failed:") == 1, result.stderr


@pytest.fixture()
def shared_dir() -> Iterator[Path]:
    """A folder every user may enter (pytest's tmp_path is root's alone), for a run as `nobody`."""
    folder = Path(tempfile.mkdtemp(prefix="preflight-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder)


def test_a_root_owned_remote_dir_is_named_with_the_command_that_fixes_it(shared_dir: Path) -> None:
    """As a user without sudo: the stack's remoteDir exists, owned by root (/opt/vllm-gb10 made by root)."""
    stack_dir = shared_dir / "opt" / "vllm-gb10"
    stack_dir.mkdir(parents=True)
    stack_dir.chmod(0o755)
    (shared_dir / "opt").chmod(0o755)
    path = make_path(shared_dir, gpu_name="NVIDIA GB10", runtimes=GOOD_RUNTIMES)
    (shared_dir / "bin").chmod(0o755)
    script = preflight_command(
        require_gpu=True, min_free_gb=1, remote_dir=str(stack_dir / "stella"), stack_dir=str(stack_dir)
    )
    nobody = [shutil.which("setpriv") or "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    result = subprocess.run(
        [*nobody, "sh", "-c", script], env={"PATH": path}, capture_output=True, text=True, check=False, cwd="/"
    )
    assert result.returncode == 1, result.stdout
    assert (
        f"preflight failed: cannot create {stack_dir}/stella: {stack_dir} is missing or not writable by nobody: "
        f"sudo install -d -o nobody -g nogroup {stack_dir}"
    ) in result.stderr

    # made by root for another user, once: not writable, and said so with its fix
    (stack_dir / "stella").mkdir()
    result = subprocess.run(
        [*nobody, "sh", "-c", script], env={"PATH": path}, capture_output=True, text=True, check=False, cwd="/"
    )
    assert f"{stack_dir}/stella is not writable by nobody: sudo chown -R nobody:nogroup {stack_dir}" in result.stderr

    # the fix the message names makes the preflight pass
    os.chown(stack_dir, 65534, 65534)
    os.chown(stack_dir / "stella", 65534, 65534)
    result = subprocess.run(
        [*nobody, "sh", "-c", script], env={"PATH": path}, capture_output=True, text=True, check=False, cwd="/"
    )


def gb10_profile(name: str) -> ExpectedMemory:
    return ExpectedMemory(name, PROFILES[name].gpu_memory_gib, "Pulumi.stella.yaml")


# MemTotal of a 128 GB GB10 as the kernel reports it (119.7 GiB), and of a 64 GB one (half).
BIG_BOX_KIB, SMALL_BOX_KIB = 125_515_000, 62_700_000


@pytest.mark.parametrize(("profile", "mem_total_kib"), [("gb10", BIG_BOX_KIB), ("gb10-64", SMALL_BOX_KIB)])
def test_a_box_whose_memory_matches_its_host_profile_passes(tmp_path: Path, profile: str, mem_total_kib: int) -> None:
    path = make_path(tmp_path, gpu_name="NVIDIA GB10", runtimes=GOOD_RUNTIMES)
    result = run_preflight(path, tmp_path, memory=gb10_profile(profile), mem_total_kib=mem_total_kib)
    assert result.returncode == 0, result.stderr
    assert f"memory={mem_total_kib}kB" in result.stdout


def test_a_64_gb_box_planned_as_a_128_gb_one_is_refused_naming_both_figures_and_the_key(tmp_path: Path) -> None:
    path = make_path(tmp_path, gpu_name="NVIDIA GB10", runtimes=GOOD_RUNTIMES)
    result = run_preflight(path, tmp_path, memory=gb10_profile("gb10"), mem_total_kib=SMALL_BOX_KIB)
    assert result.returncode == 1
    assert result.stderr == (
        "preflight failed: this box has 59.8 GiB of memory (MemTotal), but hostProfile gb10 plans for 119.7 GiB "
        "(within 8%): set vllm-gb10:hostProfile in Pulumi.stella.yaml to this box's profile "
        "(gb10: 128 GB, gb10-64: 64 GB)\n"
    )


def test_a_128_gb_box_planned_as_a_64_gb_one_is_refused_too(tmp_path: Path) -> None:
    path = make_path(tmp_path, gpu_name="NVIDIA GB10", runtimes=GOOD_RUNTIMES)
    result = run_preflight(path, tmp_path, memory=gb10_profile("gb10-64"), mem_total_kib=BIG_BOX_KIB)
    assert result.returncode == 1
    assert "this box has 119.7 GiB of memory (MemTotal), but hostProfile gb10-64 plans for 59.8 GiB" in result.stderr


@pytest.mark.parametrize(("percent", "passes"), [(-7.9, True), (7.9, True), (-8.5, False), (8.5, False)])
def test_the_box_may_differ_from_its_profile_by_up_to_8_percent(tmp_path: Path, percent: float, passes: bool) -> None:
    expected = gb10_profile("gb10")
    mem_total_kib = round(expected.gib * 1024**2 * (1 + percent / 100))
    path = make_path(tmp_path, gpu_name="NVIDIA GB10", runtimes=GOOD_RUNTIMES)
    result = run_preflight(path, tmp_path, memory=expected, mem_total_kib=mem_total_kib)
    assert (result.returncode == 0) is passes, result.stderr


def test_an_unreadable_meminfo_is_a_failure_not_a_pass(tmp_path: Path) -> None:
    path = make_path(tmp_path, gpu_name="NVIDIA GB10", runtimes=GOOD_RUNTIMES)
    script = preflight_command(
        require_gpu=True,
        min_free_gb=1,
        remote_dir=str(tmp_path / "app"),
        stack_dir=str(tmp_path),
        memory=gb10_profile("gb10"),
    )
    env = {"PATH": path, "MEMINFO": str(tmp_path / "missing")}
    result = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True, check=False)
    assert result.returncode == 1
    assert f"cannot read MemTotal from {tmp_path / 'missing'}" in result.stderr


def test_the_local_stacks_hosts_answer_the_memory_check_as_a_128_gb_gb10(tmp_path: Path) -> None:
    """The local stack runs this preflight for real over SSH on a machine that is no GB10: its hosts'
    session points MEMINFO at a stand-in, as PATH holds a stand-in nvidia-smi (infra/local/hosts.py)."""
    plan = build_plan("local")
    (preflight,) = [r for r in plan.resources if r["name"] == "stella-preflight"]
    script = preflight["inputs"]["create"]
    assert "HOST_PROFILE=gb10\n" in script
    remote_dir = next(line for line in script.splitlines() if line.startswith("REMOTE_DIR="))
    script = script.replace(remote_dir, f"REMOTE_DIR={tmp_path / 'app'}")  # not the stack's real directory
    (tmp_path / "meminfo").write_text(GB10_MEMINFO_STANDIN)
    path = make_path(tmp_path, gpu_name="NVIDIA GB10", runtimes=GOOD_RUNTIMES)
    env = {"PATH": path, "MEMINFO": str(tmp_path / "meminfo")}
    result = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
