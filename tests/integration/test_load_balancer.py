"""The sticky load balancer: real haproxy, stand-in vLLM backends in their own processes."""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import threading
import urllib.request
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from bench.lb_harness import BackendProcess, Client, Haproxy, Reply, render_config
from harness.metrics import sample_value
from harness.servers import free_port, wait_for
from tests.conftest import require_binary

pytestmark = pytest.mark.integration
SESSIONS = [f"session-{i}" for i in range(40)]


class Pool:
    def __init__(self, n: int, delay_ms: float = 0.0, log_path: Path | None = None, **options: object):
        require_binary("haproxy")
        self.backends = [BackendProcess(f"b{i}", free_port(), delay_ms) for i in range(1, n + 1)]
        self.port, self.stats_port = free_port(), free_port()
        config = render_config([b.address for b in self.backends], self.port, self.stats_port, **options)
        self.haproxy = Haproxy(config, self.port, self.stats_port, log_path=log_path)
        self.names = {f"vllm{i}": b for i, b in enumerate(self.backends, start=1)}
        self.haproxy.wait_status(dict.fromkeys(self.names, "UP"))

    def backend_of(self, reply: Reply) -> str:
        assert reply.status == 200, reply
        return reply.backend

    def round(self, sessions: list[str]) -> dict[str, str]:
        """One sequential request per session: session -> haproxy server name."""
        client = Client(self.port)
        try:
            return {s: self.backend_of(client.post({"X-Session-ID": s})) for s in sessions}
        finally:
            client.close()

    def close(self) -> None:
        self.haproxy.stop()
        for backend in self.backends:
            backend.kill()


@pytest.fixture
def pool_factory() -> Iterator:
    pools: list[Pool] = []

    def make(n: int, delay_ms: float = 0.0, log_path: Path | None = None, **options: object) -> Pool:
        pools.append(Pool(n, delay_ms, log_path, **options))
        return pools[-1]

    yield make
    for pool in pools:
        pool.close()


def test_every_session_sticks_to_one_backend_and_all_backends_serve(pool_factory) -> None:
    pool = pool_factory(3)
    rounds = [pool.round(SESSIONS) for _ in range(5)]
    assert all(r == rounds[0] for r in rounds), "a session moved between backends"
    assert set(rounds[0].values()) == set(pool.names)
    client = Client(pool.port)
    reply = client.post({"X-Session-ID": "abc"})
    assert reply.session == "abc" and reply.backend in pool.names


def test_session_key_falls_back_to_authorization_then_client_address(pool_factory) -> None:
    pool = pool_factory(3)
    client = Client(pool.port)
    by_auth = [client.post({"Authorization": "Bearer sk-test"}) for _ in range(5)]
    assert {r.session for r in by_auth} == {hashlib.sha1(b"Bearer sk-test").hexdigest()}
    assert len({r.backend for r in by_auth}) == 1
    by_address = [client.post() for _ in range(5)]
    assert {r.session for r in by_address} == {"127.0.0.1"}
    assert len({r.backend for r in by_address}) == 1


def test_the_session_header_is_configurable(pool_factory) -> None:
    pool = pool_factory(2, session_header="X-Conversation")
    client = Client(pool.port)
    replies = [client.post({"X-Conversation": "c-1", "X-Session-ID": str(i)}) for i in range(6)]
    assert {r.session for r in replies} == {"c-1"} and len({r.backend for r in replies}) == 1


def _burst(port: int, session: str, count: int) -> list[Reply]:
    """`count` requests of one session at once, each on its own connection."""
    start = threading.Barrier(count)

    def one(_: int) -> Reply:
        client = Client(port)
        start.wait()
        try:
            return client.post({"X-Session-ID": session})
        finally:
            client.close()

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(one, range(count)))


def test_the_ring_alone_spreads_sessions_within_ten_percent(pool_factory) -> None:
    """ADR-003's bound before any spill: with no balance factor, 2000 sessions land within 10% of the
    mean per backend (HAProxy's default server weight 1 gives its ring so few points that one of 4
    backends drew 1.25x the mean)."""
    pool = pool_factory(4, balance_factor=0)
    placed = Counter(pool.round([f"user-{i}" for i in range(2000)]).values())
    assert max(placed.values()) / (2000 / 4) <= 1.10, placed


def test_an_overloaded_backend_spills_the_session_within_the_bound(pool_factory) -> None:
    factor, backends, concurrent = 125, 3, 15
    bounded = pool_factory(backends, delay_ms=500, balance_factor=factor)
    replies = _burst(bounded.port, "hot-session", concurrent)
    assert all(r.status == 200 for r in replies)
    peak = Counter()
    for r in replies:
        peak[r.backend] = max(peak[r.backend], r.inflight)
    bound = math.ceil(factor / 100 * concurrent / backends) + 1  # HAProxy rounds each server's share up
    assert len(peak) > 1, "the hot session never spilled"
    assert max(peak.values()) <= bound, f"in-flight per backend {dict(peak)} over the bound {bound}"

    unbounded = pool_factory(backends, delay_ms=500, balance_factor=0)
    replies = _burst(unbounded.port, "hot-session", concurrent)
    assert len({r.backend for r in replies}) == 1, "without a balance factor the session must not spill"


def test_a_killed_backend_loses_no_request_and_its_sessions_move_then_return(pool_factory) -> None:
    pool = pool_factory(3, delay_ms=30, check_interval_ms=300)
    before = pool.round(SESSIONS)
    victim_name = Counter(before.values()).most_common(1)[0][0]
    victim = pool.names[victim_name]
    errors: list[Reply] = []
    sent = Counter()
    stop = threading.Event()

    def traffic(offset: int) -> None:
        client = Client(pool.port)
        while not stop.is_set() and sent[offset] < 5000:
            reply = client.post({"X-Session-ID": SESSIONS[(offset + sent[offset]) % len(SESSIONS)]})
            if reply.status != 200:
                errors.append(reply)
            sent[offset] += 1
        client.close()

    victim_sessions = [s for s, b in before.items() if b == victim_name]

    def slow_request_on_victim(i: int) -> Reply:
        session = victim_sessions[i % len(victim_sessions)]
        return Client(pool.port).post({"X-Session-ID": session, "X-Delay-Ms": "3000"})

    with ThreadPoolExecutor(8) as executor:
        senders = [executor.submit(traffic, i * 10) for i in range(4)]
        try:
            wait_for(lambda: sum(sent.values()) >= 40, 10, "traffic before the kill")
            caught = [executor.submit(slow_request_on_victim, i) for i in range(4)]
            wait_for(lambda: pool.haproxy.in_flight().get(victim_name, 0) >= 4, 10, "requests in flight on victim")
            victim.kill()  # SIGKILL with requests in flight on it
            lost = [r for r in (c.result() for c in caught) if r.status != 200]
            assert not lost, f"requests in flight on the killed backend were lost: {lost}"
            at_kill = sum(sent.values())
            pool.haproxy.wait_status({victim_name: "DOWN"})
            at_down = sum(sent.values())
            wait_for(lambda: sum(sent.values()) >= at_down + 40, 10, "traffic after the backend went down")
        finally:
            stop.set()
        for sender in senders:
            sender.result()
    assert sum(sent.values()) > at_kill and not errors, f"{len(errors)} failed requests, e.g. {errors[:3]}"
    during = pool.round(SESSIONS)
    moved = {s for s, b in before.items() if b == victim_name}
    assert moved and all(during[s] != victim_name for s in moved)
    assert all(during[s] == before[s] for s in before if s not in moved), "sessions of live backends moved"

    victim.start()
    pool.haproxy.wait_status({victim_name: "UP"})
    assert pool.round(SESSIONS) == before, "sessions did not return to their backend after recovery"


def test_a_dead_backend_leaves_rotation_on_its_first_failed_request(pool_factory, tmp_path: Path) -> None:
    """Passive health: active checks a minute apart cannot mark the killed backend down while this
    test waits, so only the failed requests themselves can; each is redispatched and none fails."""
    clients, log = 4, tmp_path / "haproxy.log"
    # No balance factor: the slow requests below cannot spill, they all sit on the victim.
    pool = pool_factory(3, delay_ms=30, log_path=log, check_interval_ms=60_000, balance_factor=0)
    before = pool.round(SESSIONS)
    victim_name = Counter(before.values()).most_common(1)[0][0]
    victim_sessions = [s for s, b in before.items() if b == victim_name]
    sent_after_kill: list[str] = []  # request ids sent once the backend was dead
    replies: list[Reply] = []
    killed, stop = threading.Event(), threading.Event()

    def traffic(offset: int) -> None:
        client = Client(pool.port)
        for n in range(5000):
            if stop.is_set():
                break
            request_id = f"c{offset}-{n}"
            if killed.is_set():
                sent_after_kill.append(request_id)
            session = SESSIONS[(offset + n) % len(SESSIONS)]
            replies.append(client.post({"X-Session-ID": session, "X-Request-ID": request_id}))
        client.close()

    def slow_on_victim(i: int) -> Reply:
        headers = {"X-Session-ID": victim_sessions[i % len(victim_sessions)], "X-Delay-Ms": "3000"}
        return Client(pool.port).post({**headers, "X-Request-ID": f"slow-{i}"})

    with ThreadPoolExecutor(clients + 2) as executor:
        senders = [executor.submit(traffic, i * 10) for i in range(clients)]
        try:
            wait_for(lambda: len(replies) >= 40, 10, "traffic before the kill")
            slow = [executor.submit(slow_on_victim, i) for i in range(2)]
            wait_for(lambda: pool.haproxy.in_flight().get(victim_name, 0) >= 2, 10, "requests in flight on victim")
            pool.names[victim_name].kill()  # returns once the process is gone
            killed.set()
            pool.haproxy.wait_status({victim_name: "DOWN"})
            at_down = len(replies)
            wait_for(lambda: len(replies) >= at_down + 40, 10, "traffic after the backend went down")
        finally:
            stop.set()
        for sender in senders:
            sender.result()
        slow_replies = [s.result() for s in slow]
        replies += slow_replies
    assert all(r.status == 200 for r in replies), [r for r in replies if r.status != 200][:3]

    def logged() -> dict[str, dict]:
        text = log.read_text()
        return {x["request_id"]: x for x in map(json.loads, (x for x in text.splitlines() if x.startswith("{")))}

    def dropped() -> int:
        """HAProxy gives up on a log line when its threads contend for stdout (fd_write_frag_line: 200 tries),
        and counts it: such a line is lost by design, not by the balancer."""
        return int(sample_value(pool.haproxy.metrics(), "haproxy_process_dropped_logs_total") or 0)

    # HAProxy logs a request when its stream closes, which may come just after the client has its reply.
    wanted = {*sent_after_kill, "slow-0", "slow-1"}
    try:
        wait_for(lambda: len(wanted - logged().keys()) <= dropped(), 10, "every request in HAProxy's log or dropped")
    except TimeoutError:
        missing = sorted(wanted - logged().keys())
        raise AssertionError(
            f"no log line for {missing}, {dropped()} dropped; the log ends:\n{log.read_text()[-4000:]}"
        ) from None
    slow_backends = [r.backend for r in slow_replies]
    assert all(b is not None and b != victim_name for b in slow_backends), slow_backends
    pool.haproxy.stop()
    text = log.read_text()
    assert f"Server vllm/{victim_name} is DOWN, reason: Health analyze" in text
    lines = logged()
    # On the victim when it died: replayed elsewhere (their replies above say where).
    in_flight = [lines[f"slow-{i}"] for i in (0, 1) if f"slow-{i}" in lines]
    assert all(x["retries"] != "0" and x["backend"] != victim_name for x in in_flight), in_flight
    after_kill = [lines[i] for i in sent_after_kill if i in lines]
    tried = [x for x in after_kill if x["retries"] != "0"]  # only the dead backend fails
    assert len(tried) <= clients, f"{len(tried)} requests tried the dead backend; at most one per client"
    assert all(x["backend"] != victim_name for x in after_kill)


def test_the_round_robin_peer_spreads_one_session(pool_factory) -> None:
    pool = pool_factory(2, round_robin=True)
    client = Client(pool.port)
    assert {client.post({"X-Session-ID": "one"}).backend for _ in range(4)} == {"vllm1", "vllm2"}


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"round_robin": True},
        {"balance_factor": 0},
        {"balance_factor": 101},
        {"balance_factor": 1000, "session_header": "X-Conversation"},
        {"address": "*", "check_interval_ms": 500},
    ],
)
@pytest.mark.parametrize("backends", [1, 5])
def test_every_rendered_config_passes_haproxy_check(tmp_path: Path, options: dict, backends: int) -> None:
    haproxy = require_binary("haproxy")
    addresses = [f"127.0.0.1:{9000 + i}" for i in range(backends)]
    path = tmp_path / "haproxy.cfg"
    path.write_text(render_config(addresses, 8080, 8404, **options))
    result = subprocess.run([haproxy, "-c", "-f", str(path)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_stats_page_and_prometheus_metrics_are_served(pool_factory) -> None:
    pool = pool_factory(2)
    pool.round(SESSIONS[:4])
    metrics = pool.haproxy.metrics()
    assert sample_value(metrics, "haproxy_server_status", proxy="vllm", server="vllm1", state="UP") == 1
    assert sample_value(metrics, "haproxy_backend_http_requests_total", proxy="vllm") == 4  # the round's
    with urllib.request.urlopen(f"http://127.0.0.1:{pool.stats_port}/stats", timeout=5) as response:
        assert "Statistics Report" in response.read().decode()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--port", "80"], "--backend"),
        (["--port", "80", "--backend", "localhost"], "'localhost' is not HOST:PORT"),
        (
            ["--port", "80", "--backend", "h:1", "--balance-factor", "50"],
            "balance factor 50: use 0 (no bound) or 101..1000",
        ),
        (
            ["--port", "80", "--backend", "h:1", "--balance-factor", "100"],
            "balance factor 100: use 0 (no bound) or 101..1000",
        ),
        (["--port", "80", "--backend", "h:1", "--address", "nowhere"], "--address"),
    ],
)
def test_lb_cli_refuses_bad_arguments(args: list[str], message: str) -> None:
    import sys

    result = subprocess.run([sys.executable, "-m", "infra.lb", *args], capture_output=True, text=True, check=False)
    assert result.returncode == 2 and message in result.stderr
