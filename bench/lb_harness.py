"""Real HAProxy and stand-in backends on loopback, for the load balancer tests and benchmark."""

from __future__ import annotations

import csv
import io
import json
import os
import ssl
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from harness.servers import find_binary, wait_for

ROOT = Path(__file__).resolve().parent.parent


class BackendProcess:
    """bench/lb_backend.py in its own process, so that a test can SIGKILL it."""

    def __init__(self, name: str, port: int, delay_ms: float = 0.0):
        self.name, self.port, self.delay_ms = name, port, delay_ms
        self.process: subprocess.Popen[str] | None = None
        self.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        command = [sys.executable, "-m", "bench.lb_backend", "--name", self.name, "--port", str(self.port)]
        self.process = subprocess.Popen(
            [*command, "--delay-ms", str(self.delay_ms)], cwd=ROOT, stdout=subprocess.PIPE, text=True
        )
        line = self.process.stdout.readline() if self.process.stdout else ""
        if not line.startswith("ready"):
            raise RuntimeError(f"backend {self.name} did not start: {line!r}")

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


def render_config(backends: Iterable[str], port: int, stats_port: int, **options: object) -> str:
    """haproxy.cfg from the real CLI (`python -m infra.lb`), as users and CI get it."""
    args = [sys.executable, "-m", "infra.lb", "--port", str(port), "--stats-port", str(stats_port)]
    for address in backends:
        args += ["--backend", address]
    for key, value in options.items():
        flag = f"--{key.replace('_', '-')}"
        args += [flag] if value is True else [flag, str(value)]
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, check=True).stdout


class Haproxy:
    """haproxy -db (foreground) on a rendered config; `status()` reads the stats CSV."""

    def __init__(
        self,
        config: str,
        port: int,
        stats_port: int,
        log_path: Path | None = None,
        env: dict[str, str] | None = None,
    ):
        binary = find_binary("haproxy")
        self.port, self.stats_port = port, stats_port
        self._dir = tempfile.TemporaryDirectory(prefix="haproxy-")
        path = Path(self._dir.name) / "haproxy.cfg"
        path.write_text(config)
        # The request log (JSON lines) goes to stdout: kept in `log_path` when given.
        self._log = log_path.open("w") if log_path is not None else subprocess.DEVNULL
        self.process = subprocess.Popen(
            [binary, "-db", "-f", str(path)],
            stdout=self._log,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
        )

    def _servers(self) -> list[dict[str, str]]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.stats_port}/stats;csv", timeout=2) as response:
                text = response.read().decode()
        except OSError:
            return []
        rows = csv.DictReader(io.StringIO(text.lstrip("# ")))
        return [r for r in rows if r["pxname"] == "vllm" and r["svname"] != "BACKEND"]

    def status(self) -> dict[str, str]:
        """Server name -> status (UP, DOWN, …) from the stats page's CSV export."""
        return {r["svname"]: r["status"] for r in self._servers()}

    def metrics(self) -> str:
        """The Prometheus exporter's text on the stats port (`/metrics`)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.stats_port}/metrics", timeout=5) as response:
            return response.read().decode()

    def in_flight(self) -> dict[str, int]:
        """Server name -> requests it is serving now (`scur`)."""
        return {r["svname"]: int(r["scur"] or 0) for r in self._servers()}

    def wait_status(self, expected: dict[str, str], timeout: float = 15.0, interval: float = 0.05) -> None:
        def matches() -> bool:
            current = self.status()
            return all(current.get(name, "").startswith(state) for name, state in expected.items())

        wait_for(matches, timeout, f"haproxy servers {expected} (now {self.status()})", interval)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)
        if not isinstance(self._log, int):  # a log file, not subprocess.DEVNULL
            self._log.close()
        self._dir.cleanup()


@dataclass(frozen=True)
class Reply:
    status: int
    backend: str | None
    session: str | None
    inflight: int | None


class Client:
    """One keep-alive HTTP/1.1 connection; the way an OpenAI client talks to the balancer."""

    def __init__(self, port: int, tls: ssl.SSLContext | None = None):
        import http.client

        if tls is None:
            self._connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        else:
            self._connection = http.client.HTTPSConnection("127.0.0.1", port, timeout=30, context=tls)

    def post(self, headers: dict[str, str] | None = None, path: str = "/v1/completions") -> Reply:
        body = json.dumps({"model": "m", "prompt": "hi", "max_tokens": 1}).encode()
        self._connection.request(
            "POST", path, body=body, headers={"Content-Type": "application/json", **(headers or {})}
        )
        response = self._connection.getresponse()
        data = response.read()
        inflight = json.loads(data).get("inflight") if response.status == 200 else None
        return Reply(response.status, response.getheader("X-LB-Backend"), response.getheader("X-LB-Session"), inflight)

    def close(self) -> None:
        self._connection.close()
