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

from infra.components.host import preflight_command

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


def run_preflight(path: str, tmp_path: Path, *, require_gpu: bool = True, min_free_gb: int = 1):
    script = preflight_command(
        require_gpu=require_gpu, min_free_gb=min_free_gb, remote_dir=str(tmp_path / "app"), stack_dir=str(tmp_path)
    )
    return subprocess.run(["sh", "-c", script], env={"PATH": path}, capture_output=True, text=True, check=False)


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
    assert result.returncode == 0, result.stderr
