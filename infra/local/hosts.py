"""The stack's hosts as loopback addresses on this machine: one real OpenSSH server per host.

Each host gets its own sshd on its own address and port with its own generated host key (which the
stack then pins, as a user pastes `ssh-keyscan` output), root login by the generated client key only,
and a session environment that points `docker` at the engine, puts a stand-in `nvidia-smi`
(answering as a GB10 does) first on PATH and points the preflight's MEMINFO at a stand-in
/proc/meminfo (a 128 GB GB10's MemTotal, which the `gb10` profile of the local stack asks for).
Nothing else about the host is faked: the preflight, compose and every remote script run as they
would on a GB10 box.
"""

from __future__ import annotations

import ipaddress
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

from infra.local.processes import running_pid, start_daemon, stop_daemon, wait_until
from runtime.kvcache import PROFILES

NVIDIA_SMI_STANDIN = """#!/bin/sh
# Stand-in for nvidia-smi on a loopback test host: answers the preflight's query as a GB10 box does.
case "$*" in
  *--query-gpu=name*) echo "NVIDIA GB10" ;;
  *) echo "NVIDIA-SMI stand-in | GPU 0: NVIDIA GB10 (unified memory)" ;;
esac
"""
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Stand-in for /proc/meminfo on a loopback test host: a 128 GB GB10's MemTotal (the `gb10` profile's
# 119.7 GiB), which the preflight holds the box to; the machine's own memory is what the services get.
GB10_MEMINFO_STANDIN = f"MemTotal:       {round(PROFILES['gb10'].gpu_memory_gib * 1024**2)} kB\n"


class HostError(RuntimeError):
    """A loopback host could not be started: names the host, address and reason."""


@dataclass(frozen=True)
class LoopbackHost:
    name: str
    address: str
    ssh_port: int


@dataclass(frozen=True)
class StartedHost:
    host: LoopbackHost
    host_key: str  # the public key line to pin


def _keygen(path: Path, comment: str) -> None:
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)], check=True)


def client_key(state_dir: Path) -> tuple[str, str]:
    """(private key text, public key line) of the key the stack logs in with."""
    path = state_dir / "ssh" / "client_ed25519"
    _keygen(path, "vllm-gb10-local-stack")
    return path.read_text(), path.with_suffix(".pub").read_text().strip()


def _free(address: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((address, port))
        except OSError:
            return False
    return True


def _accepts(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=1):
            return True
    except OSError:
        return False


def _host_dir(state_dir: Path, name: str) -> Path:
    return state_dir / "hosts" / name


def start_host(state_dir: Path, host: LoopbackHost, docker_env: dict[str, str]) -> StartedHost:
    """Start (or find running) the sshd of `host`; returns its host key to pin."""
    if not ipaddress.ip_address(host.address).is_loopback:
        raise HostError(
            f"host {host.name}: {host.address} is not a loopback address; the local stack uses 127.0.0.0/8 only"
        )
    sshd = shutil.which("sshd") or "/usr/sbin/sshd"
    if not Path(sshd).exists():
        raise HostError("sshd not found (apt-get install openssh-server)")
    base = _host_dir(state_dir, host.name)
    key = base / "ssh_host_ed25519_key"
    _keygen(key, f"{host.name}-host-key")
    pinned = " ".join(key.with_suffix(".pub").read_text().split()[:2])
    pid_file = base / "sshd.pid"
    if running_pid(pid_file) is not None and _accepts(host.address, host.ssh_port):
        return StartedHost(host, pinned)
    if not _free(host.address, host.ssh_port):
        raise HostError(f"host {host.name}: {host.address}:{host.ssh_port} is already taken by another process")
    bin_dir = base / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    smi = bin_dir / "nvidia-smi"
    smi.write_text(NVIDIA_SMI_STANDIN)
    smi.chmod(0o755)
    meminfo = base / "meminfo"
    meminfo.write_text(GB10_MEMINFO_STANDIN)
    _, public = client_key(state_dir)
    authorized = base / "authorized_keys"
    authorized.write_text(public + "\n")
    authorized.chmod(0o600)
    session_env = {
        "DOCKER_HOST": docker_env["DOCKER_HOST"],
        "DOCKER_CONFIG": docker_env["DOCKER_CONFIG"],
        "DOCKER_BUILDKIT": "0",
        "PATH": f"{bin_dir}:{SYSTEM_PATH}",
        "MEMINFO": str(meminfo),
    }
    config = base / "sshd_config"
    config.write_text(
        "\n".join(
            [
                f"ListenAddress {host.address}:{host.ssh_port}",
                f"HostKey {key}",
                f"PidFile {base / 'sshd.self.pid'}",
                f"AuthorizedKeysFile {authorized}",
                "PermitRootLogin prohibit-password",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "UsePAM no",
                "StrictModes no",
                "PermitUserEnvironment no",
                "SetEnv " + " ".join(f"{k}={v}" for k, v in session_env.items()),
                "Subsystem sftp internal-sftp",
                "",
            ]
        )
    )
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation directory
    check = subprocess.run([sshd, "-t", "-f", str(config)], capture_output=True, text=True)
    if check.returncode != 0:
        raise HostError(f"host {host.name}: sshd refused its config: {check.stderr.strip()}")
    start_daemon([sshd, "-D", "-e", "-f", str(config)], pid_file, base / "sshd.log")
    try:
        wait_until(
            lambda: _accepts(host.address, host.ssh_port), 20, f"sshd of {host.name} on {host.address}:{host.ssh_port}"
        )
    except TimeoutError as err:
        stop_daemon(pid_file)
        raise HostError(f"host {host.name}: {err}: {(base / 'sshd.log').read_text()[-2000:]}") from None
    return StartedHost(host, pinned)


def stop_host(state_dir: Path, name: str) -> None:
    stop_daemon(_host_dir(state_dir, name) / "sshd.pid")
