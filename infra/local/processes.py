"""Background daemons the local stack starts (dockerd, sshd): started detached, tracked by pid file,
stopped by process group, waited on by condition (never a fixed sleep)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import psutil


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str, interval_s: float = 0.2) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(interval_s)


def start_daemon(argv: list[str], pid_file: Path, log_file: Path, env: dict[str, str] | None = None) -> int:
    """Start `argv` in its own session (so its children go with it); record its pid."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("ab") as log:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    pid_file.write_text(f"{proc.pid}\n")
    return proc.pid


def running_pid(pid_file: Path) -> int | None:
    """The recorded pid if that process still runs (and is not a zombie)."""
    try:
        pid = int(pid_file.read_text().strip())
        return pid if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE else None
    except (FileNotFoundError, ValueError, psutil.NoSuchProcess):
        return None


def stop_daemon(pid_file: Path, timeout_s: float = 30) -> None:
    """SIGTERM the daemon's process group, SIGKILL what is left after `timeout_s`."""
    pid = running_pid(pid_file)
    if pid is not None:
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            psutil.Process(pid).wait(timeout_s)
        except psutil.TimeoutExpired:
            os.killpg(pid, signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    pid_file.unlink(missing_ok=True)


def listeners(addresses: set[str], ports: set[int]) -> dict[tuple[str, int], str]:
    """(address, port) -> 'pid NAME' for listening TCP sockets that clash with those addresses and ports."""
    found: dict[tuple[str, int], str] = {}
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status != psutil.CONN_LISTEN or not conn.laddr:
            continue
        ip, port = conn.laddr.ip, conn.laddr.port
        if port in ports and (ip in addresses or ip in {"0.0.0.0", "::"}):
            who = "unknown process"
            if conn.pid:
                try:
                    who = f"pid {conn.pid} ({psutil.Process(conn.pid).name()})"
                except psutil.NoSuchProcess:
                    pass
            found[(ip, port)] = who
    return found
