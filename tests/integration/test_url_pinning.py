"""DNS rebinding: a user-supplied URL is fetched from the address the policy accepted, not from a
second lookup. A real HTTPS server on 127.0.0.2 with a certificate for the name; the policy's resolver
answers 127.0.0.2 (allowlisted) once and a loopback address after that, as a rebinding name would.
The name exists in no DNS: a client that looked it up again could not connect at all."""

from __future__ import annotations

import io
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from harness.certs import lan_certificate
from harness.servers import free_port
from runtime.batch import sources
from runtime.batch.urls import UrlPolicy
from tests.integration.batch_fixtures import run_private

pytestmark = pytest.mark.integration
NAME = "files.rebind.test"


class Seen:
    def __init__(self) -> None:
        self.hosts: list[str] = []  # Host headers of GETs
        self.posts: list[str] = []  # Host headers of POSTs (webhooks)
        self.server_names: list[str | None] = []  # TLS SNI


@pytest.fixture
def https_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[int, Seen]]:
    ca, issued = lan_certificate([NAME])
    (tmp_path / "ca.pem").write_text(ca)
    (tmp_path / "cert.pem").write_text(issued.cert_pem)
    (tmp_path / "key.pem").write_text(issued.key_pem)
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "ca.pem"))  # httpx trusts the test CA (trust_env)
    seen = Seen()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.hosts.append(self.headers["Host"])
            body = b'{"custom_id": "a"}\n{"custom_id": "b"}\n'
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            seen.posts.append(self.headers["Host"])
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    context.sni_callback = lambda _sock, name, _ctx: seen.server_names.append(name)
    port = free_port()
    server = ThreadingHTTPServer(("127.0.0.2", port), Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield port, seen
    server.shutdown()
    server.server_close()


def rebinding_resolver() -> tuple[UrlPolicy, list[str]]:
    lookups: list[str] = []

    def resolve(host: str, _port: int) -> list[str]:
        lookups.append(host)
        return ["127.0.0.2"] if len(lookups) == 1 else ["127.0.0.1"]  # later: inside

    return UrlPolicy.from_entries(["127.0.0.2/32"], resolver=resolve), lookups


def test_an_input_url_is_read_from_the_checked_address_with_its_name_for_tls(https_server) -> None:
    port, seen = https_server
    policy, lookups = rebinding_resolver()
    url = f"https://{NAME}:{port}/in.jsonl"
    spool = io.BytesIO()
    copy = sources.copy_input(None, url, spool, 1 << 20, bucket="batch", policy=policy, deadline_s=60)  # type: ignore[arg-type]
    run_private(copy)
    spool.seek(0)
    lines = list(sources.spooled_lines(spool))
    assert lines == [b'{"custom_id": "a"}', b'{"custom_id": "b"}']
    assert lookups == [NAME]  # one lookup, the checked one
    assert seen.hosts == [f"{NAME}:{port}"] and seen.server_names == [NAME]  # verified as the name


def test_a_webhook_is_delivered_to_the_checked_address(https_server, redis_server) -> None:
    import redis.asyncio as redis

    from runtime.batch import webhooks
    from runtime.batch.models import Batch

    port, seen = https_server
    policy, lookups = rebinding_resolver()

    async def deliver() -> int:
        client = redis.Redis.from_url(redis_server.admin_url, decode_responses=True)
        await client.flushdb()
        sender = webhooks.WebhookSender(client, "s", max_attempts=1, policy=policy)
        try:
            batch = Batch(id="b1", endpoint="/v1/chat/completions", input_file_id="f", status="completed", created_at=1)
            await webhooks.enqueue(client, f"https://{NAME}:{port}/hook", batch, None)
            return await sender.deliver_due()
        finally:
            await sender.close()
            await client.aclose()

    assert run_private(deliver()) == 1
    assert seen.posts == [f"{NAME}:{port}"] and seen.server_names == [NAME] and lookups == [NAME]
