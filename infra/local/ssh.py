"""Run a remote Command's script and a CopyToRemote's file over real SSH, as pulumi-command does.

The connection is the one the program declares (host, port, user, private key, pinned host key):
OpenSSH's client refuses any other host key, so pinning is checked for real, not assumed.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TAIL_LINES = 30


class RemoteError(RuntimeError):
    """A script or copy failed on the host; the message names the resource, host and exit status."""


@dataclass(frozen=True)
class Connection:
    host: str
    port: int
    user: str
    private_key: str
    host_key: str

    @classmethod
    def from_inputs(cls, raw: dict[str, Any]) -> Connection:
        return cls(
            host=str(raw["host"]),
            port=int(raw.get("port") or 22),
            user=str(raw.get("user") or "root"),
            private_key=str(raw["privateKey"]),
            host_key=str(raw["hostKey"]),
        )

    @property
    def known_hosts_line(self) -> str:
        where = self.host if self.port == 22 else f"[{self.host}]:{self.port}"
        return f"{where} {self.host_key}\n"


@contextmanager
def _client_files(conn: Connection) -> Iterator[list[str]]:
    """Key and known_hosts in a private temporary directory; yields the common OpenSSH options."""
    with tempfile.TemporaryDirectory(prefix="vllm-gb10-ssh-") as tmp:
        key = Path(tmp) / "id"
        key.write_text(conn.private_key if conn.private_key.endswith("\n") else conn.private_key + "\n")
        key.chmod(0o600)
        known = Path(tmp) / "known_hosts"
        known.write_text(conn.known_hosts_line)
        yield [
            "-F",
            "/dev/null",
            "-i",
            str(key),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            f"UserKnownHostsFile={known}",
            "-o",
            "ConnectTimeout=10",
            "-o",
            "LogLevel=ERROR",
        ]


def _tail(text: str) -> str:
    return "\n".join(text.strip().splitlines()[-TAIL_LINES:])


def run_script(
    resource: str, conn: Connection, script: str, stdin: str | None = None, *, timeout_s: float = 3600
) -> tuple[str, str]:
    """Run `script` as the SSH session's command (the remote login shell runs it); returns stdout, stderr."""
    with _client_files(conn) as options:
        argv = ["ssh", *options, "-p", str(conn.port), f"{conn.user}@{conn.host}", script]
        try:
            done = subprocess.run(
                argv, input=stdin or "", capture_output=True, text=True, timeout=timeout_s, env=_client_env()
            )
        except subprocess.TimeoutExpired:
            raise RemoteError(f"{resource}: no answer from {conn.host}:{conn.port} within {timeout_s:.0f} s") from None
    if done.returncode != 0:
        raise RemoteError(
            f"{resource}: exit status {done.returncode} on {conn.user}@{conn.host}:{conn.port}\n"
            f"{_tail(done.stderr) or _tail(done.stdout)}"
        )
    return done.stdout, done.stderr


def copy_text(resource: str, conn: Connection, text: str, remote_path: str) -> None:
    """Copy `text` to `remote_path` with scp (SFTP), as CopyToRemote copies an asset."""
    with _client_files(conn) as options, tempfile.NamedTemporaryFile("w", suffix=".copy") as source:
        source.write(text)
        source.flush()
        target = (
            f"{conn.user}@[{conn.host}]:{remote_path}" if ":" in conn.host else f"{conn.user}@{conn.host}:{remote_path}"
        )
        done = subprocess.run(
            ["scp", *options, "-q", "-P", str(conn.port), source.name, target],
            capture_output=True,
            text=True,
            timeout=300,
            env=_client_env(),
        )
    if done.returncode != 0:
        raise RemoteError(f"{resource}: copy to {conn.host}:{remote_path} failed\n{_tail(done.stderr)}")


def _client_env() -> dict[str, str]:
    """No agent, no user config: only the declared key may authenticate."""
    return {k: v for k, v in os.environ.items() if k not in {"SSH_AUTH_SOCK", "SSH_AGENT_PID"}}
