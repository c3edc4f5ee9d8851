"""Issue 32's attacks on the load balancer, each tried as a tenant with a valid key (or none) would: real
HAProxy with the rendered config, stand-in vLLM servers on loopback that fail as vLLM does
(bench/lb_backend.py: POST /scale_elastic_ep answers 500, X-Status makes any request fail)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from bench.lb_harness import BackendProcess, Haproxy
from harness.certs import lan_certificate
from harness.servers import free_port, wait_for
from infra.render.haproxy import Backend, LoadBalancerConfig, render_haproxy_cfg
from tests.conftest import require_binary

pytestmark = pytest.mark.integration
KEY = "sk-tenant-key-for-the-security-test"
VLLM_KEY = "vllm-internal-key"


@dataclass
class Lb:
    port: int
    haproxy: Haproxy
    log_path: Path
    ca: str | None

    @property
    def url(self) -> str:
        return f"{'https' if self.ca else 'http'}://127.0.0.1:{self.port}"

    def request(
        self, method: str, path: str, key: str | None = KEY, headers: dict[str, str] | None = None, **kwargs: object
    ) -> httpx.Response:
        sent = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.request(method, f"{self.url}{path}", headers={**sent, **(headers or {})}, timeout=10, **kwargs)  # type: ignore[arg-type]

    def chat(self, body: dict[str, object] | None = None, headers: dict[str, str] | None = None) -> httpx.Response:
        return self.request("POST", "/v1/chat/completions", headers=headers, json=body or {"model": "m"})


def _start(tmp_path: Path, tls: bool = False) -> tuple[Lb, list[BackendProcess]]:
    require_binary("haproxy")
    backends = [BackendProcess(f"b{i}", free_port()) for i in (1, 2)]
    keys = tmp_path / "stack-keys.map"
    keys.write_text(f"{hashlib.sha256(KEY.encode()).hexdigest()} tenant\n")
    ca, pem = None, None
    if tls:
        ca, issued = lan_certificate(["127.0.0.1"], hours=1)
        pem = tmp_path / "server.pem"
        pem.write_text(issued.cert_pem + issued.key_pem)
    port, stats_port = free_port(), free_port()
    config = render_haproxy_cfg(
        LoadBalancerConfig(
            backends=tuple(Backend(f"vllm{i}", b.address) for i, b in enumerate(backends, start=1)),
            bind=f"127.0.0.1:{port}",
            stats_bind=f"127.0.0.1:{stats_port}",
            # Active checks a minute apart: only a request can change a server's state while a test runs.
            check_interval_ms=60_000,
            api_key_maps=(str(keys),),
            backend_key_env="VLLM_API_KEY",
            tls_pem=str(pem) if pem else None,
        )
    )
    log_path = tmp_path / "haproxy.log"
    haproxy = Haproxy(config, port, stats_port, log_path=log_path, env={"VLLM_API_KEY": VLLM_KEY})
    haproxy.wait_status({"vllm1": "UP", "vllm2": "UP"})
    return Lb(port, haproxy, log_path, ca), backends


@contextlib.contextmanager
def _running(tmp_path: Path, tls: bool = False) -> Iterator[Lb]:
    found, backends = _start(tmp_path, tls=tls)
    try:
        yield found
    finally:
        found.haproxy.stop()
        for backend in backends:
            backend.kill()


@pytest.fixture
def lb(tmp_path: Path) -> Iterator[Lb]:
    with _running(tmp_path) as found:
        yield found


@pytest.fixture
def tls_lb(tmp_path: Path) -> Iterator[Lb]:
    with _running(tmp_path, tls=True) as found:
        yield found


def _sessions_per_server(lb: Lb) -> dict[str, str]:
    """A session key that lands on each server (server name -> session)."""
    found: dict[str, str] = {}
    for i in range(200):
        reply = lb.chat(headers={"X-Session-ID": f"s-{i}"})
        found.setdefault(reply.headers["X-LB-Backend"], f"s-{i}")
        if len(found) == 2:
            return found
    raise AssertionError(f"200 sessions reached only {found}")


def test_a_tenant_cannot_take_a_server_out_of_rotation(lb: Lb) -> None:
    """Finding 1: a path vLLM answers with 500 (/scale_elastic_ep on a single-engine server), and any
    request vLLM fails with a 5xx, repeated on each server (the tenant picks X-Session-ID): every server
    stays in rotation."""
    replies = []
    for session in _sessions_per_server(lb).values():
        headers = {"X-Session-ID": session}
        replies.append(lb.request("POST", "/scale_elastic_ep", headers=headers, json={"new_data_parallel_size": 1}))
        for _ in range(3):
            replies.append(lb.chat(headers={**headers, "X-Status": "500"}))
    status = lb.haproxy.status()  # "UP", or "UP 1/2" before a server's first active check
    assert all(s.startswith("UP") for s in status.values()), (status, [(r.status_code, r.text) for r in replies])
    assert [r.status_code for r in replies] == [404, 500, 500, 500] * 2
    assert "is DOWN" not in lb.log_path.read_text()
    served = _sessions_per_server(lb)  # both still serve
    assert set(served) == {"vllm1", "vllm2"}


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/invocations"),  # SageMaker's route to the chat handler: vLLM's key does not guard it
        ("POST", "/tokenize"),
        ("POST", "/detokenize"),
        ("GET", "/metrics"),
        ("POST", "/scale_elastic_ep"),
        ("GET", "/version"),
        ("POST", "/v1/responses"),
        ("POST", "/v1/chat/completions/"),
        ("POST", "/v1/chat%2Fcompletions"),
        ("POST", "//v1/chat/completions"),
    ],
)
def test_only_the_openai_routes_reach_vllm(lb: Lb, method: str, path: str) -> None:
    """Finding 8: the balancer sends vLLM's key with every request, so any path it forwards is open to
    every tenant; HAProxy answers the others itself."""
    refused = lb.request(method, path, json={"model": "m", "messages": []})
    assert refused.status_code == 404, f"{refused.status_code} {refused.text}"
    assert "X-LB-Backend" not in refused.headers  # HAProxy answered; no server saw it
    assert refused.json()["error"]["code"] == "not_found"


def test_the_openai_routes_are_served_and_a_wrong_method_gets_405(lb: Lb) -> None:
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings"):
        served = lb.request("POST", path, json={"model": "m"})
        assert served.status_code == 200 and served.json()["path"] == path, served.text
    models = lb.request("GET", "/v1/models")
    assert models.status_code == 200 and models.json()["path"] == "/v1/models"
    assert lb.request("GET", "/health", key=None).status_code == 200
    assert lb.request("POST", "/invocations", key=None).status_code == 401  # the key first
    wrong = lb.request("GET", "/v1/chat/completions")
    assert wrong.status_code == 405 and wrong.headers["Allow"] == "POST"
    assert lb.request("DELETE", "/v1/models").status_code == 405


def _unauthenticated_partial_body(port: int, authorization: str | None) -> bytes:
    """Headers announcing a 200 kB body, then 1 kB of it: HAProxy's first reply, or b'' if none came."""
    head = [
        "POST /v1/chat/completions HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Content-Type: application/json",
        "Content-Length: 200000",
    ]
    if authorization:
        head.append(f"Authorization: {authorization}")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + b"x" * 1000)
        try:
            return connection.recv(4096)
        except TimeoutError:
            return b""


def test_an_unauthenticated_request_is_refused_before_its_body_is_buffered(lb: Lb) -> None:
    """Finding 10: the key is checked on the headers; HAProxy does not hold a body (up to tune.bufsize per
    connection, for 30 s) for a client it will refuse."""
    for authorization in (None, "Bearer sk-guess"):
        reply = _unauthenticated_partial_body(lb.port, authorization)
        assert reply.startswith(b"HTTP/1.1 401"), f"{authorization}: no 401 while the body was incomplete: {reply!r}"


def test_client_chosen_ids_cannot_forge_or_break_a_log_line(lb: Lb) -> None:
    """Finding 10: X-Request-ID and X-Session-ID are escaped into the JSON request log."""
    request_id = 'r1","status":999,"injected":"yes'
    session = 'sess"\\ion'
    assert lb.chat(headers={"X-Request-ID": request_id, "X-Session-ID": session}).status_code == 200

    def entry() -> dict[str, object] | None:
        for line in lb.log_path.read_text().splitlines():
            if line.startswith("{") and "r1" in line:
                return json.loads(line)  # type: ignore[no-any-return]
        return None

    logged = wait_for(entry, 10, "the request's log line")
    assert logged["request_id"] == request_id and logged["session"] == session, logged
    assert logged["status"] == 200 and "injected" not in logged


@pytest.mark.parametrize("priority", [-1, -1000, "-5", -1.0, " -3"])
def test_a_client_cannot_jump_the_queue_with_a_negative_priority(lb: Lb, priority: object) -> None:
    """Finding 10: vLLM runs priority scheduling (lower first); interactive requests run at 0."""
    refused = lb.chat({"model": "m", "messages": [], "priority": priority})
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"]["param"] == "priority"


def test_a_zero_or_positive_priority_passes(lb: Lb) -> None:
    for priority in (0, 10):  # 10: the batch worker's default (batchRequestPriority)
        assert lb.chat({"model": "m", "messages": [], "priority": priority}).status_code == 200
    # "priority" inside a message is text, not the field
    assert lb.chat({"model": "m", "messages": [{"role": "user", "content": '"priority": -1'}]}).status_code == 200


def _handshake(lb: Lb, ciphers: str | None, version: ssl.TLSVersion) -> str:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cadata=lb.ca)
    context.minimum_version = context.maximum_version = version
    if ciphers:
        context.set_ciphers(ciphers)
    with (
        socket.create_connection(("127.0.0.1", lb.port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        cipher = tls.cipher()
        assert cipher is not None
        return cipher[0]


@pytest.mark.parametrize("suite", ["ECDHE-ECDSA-AES128-SHA", "ECDHE-ECDSA-AES256-SHA", "ECDHE-ECDSA-AES128-SHA256"])
def test_tls12_refuses_cbc_sha1_and_non_ecdhe_suites(tls_lb: Lb, suite: str) -> None:
    """Finding 10: on TLS 1.2 only ECDHE with AEAD ciphers (Mozilla intermediate)."""
    with pytest.raises(ssl.SSLError):
        _handshake(tls_lb, f"{suite}:@SECLEVEL=0", ssl.TLSVersion.TLSv1_2)


def test_tls_serves_ecdhe_aead_on_12_and_13(tls_lb: Lb) -> None:
    for suite in ("ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-CHACHA20-POLY1305"):
        assert _handshake(tls_lb, suite, ssl.TLSVersion.TLSv1_2) == suite
    assert _handshake(tls_lb, None, ssl.TLSVersion.TLSv1_3).startswith("TLS_")
