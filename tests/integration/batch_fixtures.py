"""Servers for the batch tests: real redis-server and moto's S3 server, started once per session."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import subprocess
import sys
import threading
from collections.abc import Coroutine, Iterable, Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import pytest

from harness.requests import chat_lines
from harness.servers import RedisServer, S3Server, free_port, wait_for
from runtime.batch.settings import BatchSettings

__all__ = ["chat_lines"]  # the tests import it from here too

T = TypeVar("T")
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})


def wait_batch(client: Any, batch_id: str, timeout: float = 240, statuses: Iterable[str] = TERMINAL) -> Any:
    """The batch once the API reports one of `statuses` (an `openai.OpenAI` client's view)."""
    wanted = frozenset(statuses)
    return wait_for(
        lambda: (b := client.batches.retrieve(batch_id)).status in wanted and b,
        timeout,
        f"batch {batch_id} to reach {sorted(wanted)}",
        interval=0.2,
    )


def file_rows(client: Any, file_id: str | None) -> list[dict[str, Any]]:
    """The JSONL rows of an output or error file; none when the batch has no such file."""
    if file_id is None:
        return []
    return [json.loads(line) for line in client.files.content(file_id).text.splitlines() if line]


def settings_of(env: Mapping[str, str]) -> BatchSettings:
    """The services' settings from a batch_env() environment, as the API and worker would read them."""
    return BatchSettings(**{k.removeprefix("BATCH_").lower(): v for k, v in env.items() if k.startswith("BATCH_")})


def run_private(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run `coroutine` to its end in a fresh event loop that is never installed as the current one:
    asyncio.run would leave "no current event loop" behind, which breaks the Pulumi mock tests that run
    later in the same process (no async plugin is needed either)."""
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coroutine)
    finally:
        loop.close()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    server = S3Server(tmp_path_factory.mktemp("s3"))
    server.start()
    yield server
    server.stop()


class LoopbackServer:
    """A real HTTP server on 127.0.0.1 (a free port) serving `handler` in a thread."""

    def serve(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self.port = free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class WebhookReceiver(LoopbackServer):
    """A real HTTP endpoint that records deliveries; the first `fail_first` attempts get a 500."""

    def __init__(self, fail_first: int = 0):
        self.deliveries: list[dict] = []
        self.attempts = 0
        self.fail_first = fail_first
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.attempts += 1
                if receiver.attempts <= receiver.fail_first:
                    self.send_response(500)
                    self.end_headers()
                    return
                receiver.deliveries.append({"headers": dict(self.headers), "body": body})
                self.send_response(204)
                self.end_headers()

            def do_GET(self) -> None:
                path = Path(receiver.files_dir) / self.path.lstrip("/")
                data = path.read_bytes() if path.is_file() else None
                self.send_response(200 if data is not None else 404)
                self.end_headers()
                if data is not None:
                    self.wfile.write(data)

            def log_message(self, *_args) -> None:
                pass

        self.files_dir = ""
        self.serve(Handler)


def admin_cli(env: Mapping[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """`python -m runtime.batch.admin ARGS` against a batch_env() environment's Redis, as an operator runs it."""
    return subprocess.run(
        [sys.executable, "-m", "runtime.batch.admin", *args],
        env={**os.environ, "BATCH_REDIS_URL": env["BATCH_REDIS_URL"]},
        capture_output=True,
        text=True,
        timeout=60,
    )


def tenant_keys(env: Mapping[str, str], *names: str) -> dict[str, str]:
    """A batch API key per tenant name, made with the admin CLI as an operator makes them."""
    made = {}
    for name in names:
        created = admin_cli(env, "keys", "create", name)
        assert created.returncode == 0, created.stderr
        made[name] = created.stdout.strip()
    return made


def counted_job_failures(worker_log: Path) -> list[str]:
    """Job attempts a worker counted against a job; a Redis or S3 fault is logged as "not counted"."""
    lines = [json.loads(x) for x in worker_log.read_text().splitlines() if x.startswith("{")]
    return [x["message"] for x in lines if x["message"].startswith("job attempt") and "not counted" not in x["message"]]


class TricklingReceiver(LoopbackServer):
    """A webhook receiver that answers a byte at a time, every `pace_s`, until released: each byte comes
    well within any read timeout, so only an overall deadline ends the sender's wait. Counts the
    connections open now (`open`), the most at once (`most_open`), and those the sender cut (`cut`)."""

    def __init__(self, pace_s: float = 0.05, give_up_s: float = 120.0):
        self.released = threading.Event()
        self.started = threading.Event()  # a delivery is being trickled now
        self.lock = threading.Lock()
        self.open = self.most_open = self.cut = self.finished = 0
        self.bodies: list[bytes] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver.lock:
                    receiver.bodies.append(body)
                    receiver.open += 1
                    receiver.most_open = max(receiver.most_open, receiver.open)
                receiver.started.set()
                head = b"HTTP/1.1 204 No Content\r\nX-Slow: "  # then one more "a" per beat, until released
                trickle = itertools.chain(head, itertools.repeat(ord("a")))
                sent, waited = 0, 0.0
                try:
                    # paced by the release event's own timeout: the receiver is slow on purpose
                    while not receiver.released.wait(pace_s) and waited < give_up_s:
                        waited += pace_s
                        self.wfile.write(bytes([next(trickle)]))
                        self.wfile.flush()
                        sent += 1
                    rest = head[sent:] if sent < len(head) else b""
                    self.wfile.write(rest + b"done\r\nContent-Length: 0\r\n\r\n")
                    self.wfile.flush()
                    with receiver.lock:
                        receiver.finished += 1
                except (BrokenPipeError, ConnectionResetError):
                    with receiver.lock:
                        receiver.cut += 1
                    self.close_connection = True
                finally:
                    with receiver.lock:
                        receiver.open -= 1

            def log_message(self, *_args: object) -> None:
                pass

        self.serve(Handler)

    def close(self) -> None:
        self.released.set()
        super().close()
