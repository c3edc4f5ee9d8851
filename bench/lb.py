"""Load balancer benchmark: real HAProxy on loopback, against the seeds' ADR-003 acceptance.

Prints, in one run, each figure beside its peer or target:
  1. added latency per request, HAProxy vs calling the backend directly (p50, p99), then HAProxy
     serving TLS as the stacks do, and a new connection's TLS handshake;
  2. balance against stickiness: Zipf and uniform sessions through the bounded-load hash at
     factors 110, 125, 150 and without a factor: max/mean in-flight load, max/mean request share,
     and the share of requests served where their session's previous request was;
  3. failover: a backend SIGKILLed under load, several times: the time from the kill to the last
     request HAProxy sent it, failed requests, and what the requests in flight on it lost;
  4. KV reuse (bench/lb_kv.py): multi-turn conversations through HAProxy to two vLLM CPU servers,
     sticky vs round robin: vLLM's prefix-cache hit rate and the time to first token;
  5. unauthenticated clients (issue 32): HAProxy's resident memory while 1,000 clients without a key
     each send half of a 300 kB body, with several models (tune.bufsize 256 KiB).
Stand-in backends (bench/lb_backend.py) answer in 20 ms; part 4 runs real vLLM.

`python -m bench.lb [--requests N] [--kills N] [--skip-vllm] [--unauthenticated N]`
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import ssl
import statistics
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from bench.lb_harness import BackendProcess, Client, Haproxy, render_config
from harness.servers import free_port, wait_for

FACTORS = (110, 125, 150, 0)  # 0: the hash without a bound
IMBALANCE_TARGET = 1.10  # ADR-003: load imbalance under 10% across GPUs
FAILOVER_TARGET_MS = 100.0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def timed_requests(port: int, count: int, tls: ssl.SSLContext | None = None) -> list[float]:
    client, times = Client(port, tls), []
    for i in range(count + 200):
        start = time.perf_counter()
        reply = client.post({"X-Session-ID": "latency"})
        elapsed = time.perf_counter() - start
        assert reply.status == 200, reply
        if i >= 200:  # warm-up excluded
            times.append(elapsed * 1000)
    client.close()
    return times


def start_pool(
    n: int, delay_ms: float, log_path: Path | None = None, **options: object
) -> tuple[list[BackendProcess], Haproxy]:
    backends = [BackendProcess(f"b{i}", free_port(), delay_ms) for i in range(1, n + 1)]
    port, stats_port = free_port(), free_port()
    config = render_config([b.address for b in backends], port, stats_port, **options)
    haproxy = Haproxy(config, port, stats_port, log_path=log_path)
    haproxy.wait_status({f"vllm{i}": "UP" for i in range(1, n + 1)})
    return backends, haproxy


def stop_pool(backends: list[BackendProcess], haproxy: Haproxy) -> None:
    haproxy.stop()
    for b in backends:
        b.kill()


def tls_material(folder: Path) -> tuple[Path, ssl.SSLContext]:
    """A CA and a certificate for 127.0.0.1 as the stacks make them (ECDSA P-256): HAProxy's PEM, and a
    client context trusting the CA."""
    from harness.certs import lan_certificate

    ca, issued = lan_certificate(["127.0.0.1"], hours=1)
    pem = folder / "server.pem"
    pem.write_text(issued.cert_pem + issued.key_pem)
    return pem, ssl.create_default_context(cadata=ca)


def latency(count: int) -> None:
    backends, haproxy = start_pool(1, 0.0)
    try:
        direct = timed_requests(backends[0].port, count)
        via_lb = timed_requests(haproxy.port, count)
    finally:
        stop_pool(backends, haproxy)
    with tempfile.TemporaryDirectory(prefix="bench-lb-tls-") as folder:
        pem, trust = tls_material(Path(folder))
        backends, haproxy = start_pool(1, 0.0, tls_pem=str(pem))  # clients over TLS, as the stacks serve them
        try:
            via_tls = timed_requests(haproxy.port, count, trust)
            handshakes = [_handshake_ms(haproxy.port, trust) for _ in range(200)]
        finally:
            stop_pool(backends, haproxy)
    d50, d99, l50, l99 = (percentile(direct, 0.5), percentile(direct, 0.99), percentile(via_lb, 0.5),
                          percentile(via_lb, 0.99))  # fmt: skip
    print(f"1. latency over {count} sequential keep-alive requests (ms)")
    print(f"   {'':14}{'p50':>8}{'p99':>8}")
    print(f"   {'direct':14}{d50:8.3f}{d99:8.3f}")
    print(f"   {'via haproxy':14}{l50:8.3f}{l99:8.3f}")
    print(f"   {'added':14}{l50 - d50:8.3f}{l99 - d99:8.3f}   target p50 <= 0.500")
    t50, t99 = percentile(via_tls, 0.5), percentile(via_tls, 0.99)
    print(f"   {'haproxy + TLS':14}{t50:8.3f}{t99:8.3f}   TLS on a kept-alive connection adds {t50 - l50:.3f} ms p50")
    h50, h99 = percentile(handshakes, 0.5), percentile(handshakes, 0.99)
    print(f"   {'TLS handshake':14}{h50:8.3f}{h99:8.3f}   a new connection's TCP + TLS set-up (ECDSA P-256)")


def _handshake_ms(port: int, trust: ssl.SSLContext) -> float:
    start = time.perf_counter()
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        trust.wrap_socket(raw, server_hostname="127.0.0.1"),
    ):
        pass
    return (time.perf_counter() - start) * 1000


def zipf_sessions(count: int, population: int, s: float, seed: int) -> list[str]:
    """Session ids drawn with Zipf weights (s=0: uniform)."""
    rng = random.Random(seed)
    weights = [1 / (rank**s) for rank in range(1, population + 1)]
    return [f"user-{i}" for i in rng.choices(range(population), weights=weights, k=count)]


@dataclass(frozen=True)
class Served:
    session: str
    backend: str
    start: float
    end: float


@dataclass(frozen=True)
class BalanceRow:
    inflight_max_mean: float  # max over backends of time-averaged in-flight requests / their mean
    requests_max_mean: float  # the same for requests served (the imbalance alert's measure)
    sticky: float  # share of a session's later requests served where its previous request was (KV reuse)


def summarise(served: list[Served], names: list[str]) -> BalanceRow:
    busy: defaultdict[str, float] = defaultdict(float)  # request-seconds per backend: time-averaged load x run time
    for r in served:
        busy[r.backend] += r.end - r.start
    counts = Counter(r.backend for r in served)
    previous: dict[str, str] = {}
    same = []
    for r in sorted(served, key=lambda r: r.start):
        if r.session in previous:
            same.append(previous[r.session] == r.backend)
        previous[r.session] = r.backend
    loads, shares = [busy[n] for n in names], [counts[n] for n in names]
    return BalanceRow(max(loads) / statistics.mean(loads), max(shares) / statistics.mean(shares), sum(same) / len(same))


def balance(sessions: list[str], factor: int, backends_n: int = 4, concurrency: int = 32) -> BalanceRow:
    backends, haproxy = start_pool(backends_n, 20.0, balance_factor=factor)
    served: list[Served] = []
    lock = threading.Lock()

    def worker(offset: int) -> None:
        client = Client(haproxy.port)
        for session in sessions[offset::concurrency]:
            start = time.perf_counter()
            reply = client.post({"X-Session-ID": session})
            assert reply.status == 200 and reply.backend, reply
            with lock:
                served.append(Served(session, reply.backend, start, time.perf_counter()))
        client.close()

    try:
        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(worker, range(concurrency)))
    finally:
        stop_pool(backends, haproxy)
    return summarise(served, [f"vllm{i}" for i in range(1, backends_n + 1)])


def balance_table(requests: int) -> None:
    populations = {
        "Zipf": zipf_sessions(requests, population=500, s=1.1, seed=7),
        "uniform": zipf_sessions(requests, population=2000, s=0.0, seed=7),
    }
    print(f"2. balance against stickiness: 4 backends, 32 clients, {requests} requests per row")
    print("   (Zipf: 500 users, s=1.1; uniform: 2000 users; in-flight load averaged over the run)")
    print(f"   {'sessions':10}{'factor':>8}{'in-flight max/mean':>20}{'requests max/mean':>19}{'sticky':>9}")
    for label, sessions in populations.items():
        for factor in FACTORS:
            row = balance(sessions, factor)
            name = str(factor) if factor else "none"
            print(f"   {label:10}{name:>8}{row.inflight_max_mean:20.2f}{row.requests_max_mean:19.2f}{row.sticky:9.1%}")
    print("   sticky: a session's requests served where its previous request was (its prefix cache)")
    print(f"   target in-flight max/mean <= {IMBALANCE_TARGET:.2f} (ADR-003); the default factor is 150")


@dataclass(frozen=True)
class Sent:
    request_id: str
    start: float
    end: float
    status: int


@dataclass(frozen=True)
class Kill:
    at: float
    down_seen: float  # first stats poll that showed it DOWN
    restarted: float
    up_after_s: float  # from its restart to the active checks' UP


def failover(kills: int, clients: int = 8, check_interval_ms: int = 2000) -> None:
    """SIGKILL one of 3 backends under load, `kills` times; each time restart it and wait for UP."""
    log = Path(tempfile.mkdtemp(prefix="bench-lb-")) / "haproxy.log"
    backends, haproxy = start_pool(3, 20.0, log_path=log, check_interval_ms=check_interval_ms)
    records: list[Sent] = []
    stop, lock = threading.Event(), threading.Lock()

    def worker(offset: int) -> None:
        client, n = Client(haproxy.port), 0
        while not stop.is_set() and n < 100_000:
            request_id = uuid.uuid4().hex
            start = time.perf_counter()
            reply = client.post({"X-Session-ID": f"s{offset}-{n % 50}", "X-Request-ID": request_id})
            with lock:
                records.append(Sent(request_id, start, time.perf_counter(), reply.status))
            n += 1
        client.close()

    def more_traffic(count: int, what: str) -> None:
        seen = len(records)
        wait_for(lambda: len(records) >= seen + count, 20, what)

    events: list[Kill] = []
    victim = backends[0]
    try:
        with ThreadPoolExecutor(clients) as pool:
            futures = [pool.submit(worker, i) for i in range(clients)]
            try:
                for _ in range(kills):
                    more_traffic(300, "traffic")
                    killed_at = time.perf_counter()
                    victim.kill()
                    haproxy.wait_status({"vllm1": "DOWN"}, timeout=15, interval=0.002)
                    down_seen = time.perf_counter()
                    more_traffic(300, "traffic without the killed backend")
                    restarted = time.perf_counter()
                    victim.start()
                    haproxy.wait_status({"vllm1": "UP"}, timeout=30, interval=0.01)
                    events.append(Kill(killed_at, down_seen, restarted, time.perf_counter() - restarted))
            finally:
                stop.set()
            for f in futures:
                f.result()
    finally:
        stop_pool(backends, haproxy)
    report_failover(records, events, log, clients, check_interval_ms)


def report_failover(records: list[Sent], kills: list[Kill], log: Path, clients: int, interval_ms: int) -> None:
    lines = [json.loads(x) for x in log.read_text().splitlines() if x.startswith("{")]
    retried = {x["request_id"] for x in lines if x["retries"] != "0"}  # only the killed backend fails
    normal = statistics.median(r.end - r.start for r in records if r.request_id not in retried)
    last_ms, down_ms, lost_ms, tried_after = [], [], [], []
    for kill in kills:
        tried = [r for r in records if r.request_id in retried and kill.at < r.end and r.start < kill.restarted]
        in_flight = [r for r in tried if r.start < kill.at]
        after = [r for r in tried if r.start >= kill.at]
        last_ms.append(max((r.start - kill.at for r in after), default=-1.0) * 1000)
        down_ms.append((kill.down_seen - kill.at) * 1000)
        lost_ms += [(r.end - r.start - normal) * 1000 for r in in_flight]
        tried_after.append(len(after))
    failed = sum(1 for r in records if r.status != 200)
    print(f"3. failover: 3 backends, {clients} clients, one SIGKILLed {len(kills)} times (restarted in between)")
    shown = ", ".join(f"{x:.1f}" if x >= 0 else "none after the kill" for x in last_ms)
    print(f"   kill -> last request sent to it (ms), each kill: {shown}"
          f"   target < {FAILOVER_TARGET_MS:.0f}")  # fmt: skip
    print(f"   requests sent to it after each kill (all redispatched): {tried_after}")
    print(f"   kill -> stats page shows it DOWN (ms): {', '.join(f'{x:.1f}' for x in down_ms)}")
    if lost_ms:
        p50, worst = percentile(lost_ms, 0.5), max(lost_ms)
        print(f"   {len(lost_ms)} requests in flight on it at the kills: added latency p50 {p50:.1f} ms, "
              f"max {worst:.1f} ms (a request takes {normal * 1000:.1f} ms)")  # fmt: skip
    up = statistics.mean(k.up_after_s for k in kills)
    print(f"   back in rotation {up:.1f} s after its restart (2 active checks, every {interval_ms} ms)")
    print(f"   requests sent {len(records)}, failed {failed}   target 0 failed")


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def unauthenticated_memory(connections: int) -> None:
    """HAProxy refuses a client without a key on its headers: its body is never held in a buffer."""
    import hashlib

    from infra.render.haproxy import Backend, LoadBalancerConfig, ModelRoute, render_haproxy_cfg, render_models_lua

    backends = [BackendProcess(f"m{i}", free_port()) for i in (1, 2)]
    routes = tuple(ModelRoute(m, (Backend(f"s{m}", b.address),)) for m, b in zip(("a", "b"), backends, strict=True))
    port, stats_port = free_port(), free_port()
    with tempfile.TemporaryDirectory(prefix="bench-lb-mem-") as folder:
        keys, lua = Path(folder) / "keys.map", Path(folder) / "models.lua"
        keys.write_text(f"{hashlib.sha256(b'sk-bench').hexdigest()} bench\n")
        lua.write_text(render_models_lua(routes))
        config = LoadBalancerConfig(
            backends=routes[0].servers,
            bind=f"127.0.0.1:{port}",
            stats_bind=f"127.0.0.1:{stats_port}",
            api_key_maps=(str(keys),),
            models=routes,
            models_lua=str(lua),
        )
        haproxy = Haproxy(render_haproxy_cfg(config), port, stats_port)
        clients: list[socket.socket] = []
        try:
            wait_for(lambda: haproxy.status() != {}, 15, "haproxy's stats page")
            idle = _rss_mb(haproxy.process.pid)
            head = (
                f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                "Content-Type: application/json\r\nContent-Length: 300000\r\n\r\n"
            ).encode()
            for _ in range(connections):
                client = socket.create_connection(("127.0.0.1", port), timeout=10)
                clients.append(client)
                try:
                    client.sendall(head + b"x" * 150_000)
                except OSError:
                    pass  # refused and closed before the half body was in: what should happen
            readings = [_rss_mb(haproxy.process.pid)]

            def settled() -> bool:  # two readings 100 ms apart agree within 1 MB
                time.sleep(0.1)
                readings.append(_rss_mb(haproxy.process.pid))
                return abs(readings[-1] - readings[-2]) < 1

            wait_for(settled, 10, "haproxy's memory to settle")
            print(f"5. {connections} clients without a key, each half of a 300 kB body sent (several models)")
            print(f"   haproxy resident memory: {idle:.0f} MB idle -> {readings[-1]:.0f} MB (tune.bufsize 256 KiB)")
        finally:
            for client in clients:
                client.close()
            stop_pool(backends, haproxy)


def main() -> None:
    parser = argparse.ArgumentParser(description="load balancer benchmark")
    parser.add_argument("--requests", type=int, default=3000, help="requests per balance row")
    parser.add_argument("--latency-requests", type=int, default=3000)
    parser.add_argument("--kills", type=int, default=3, help="backend kills in the failover part")
    parser.add_argument("--skip-vllm", action="store_true", help="leave out part 4 (two vLLM CPU servers)")
    parser.add_argument("--unauthenticated", type=int, default=1000, help="clients without a key in part 5")
    args = parser.parse_args()
    latency(args.latency_requests)
    balance_table(args.requests)
    failover(args.kills)
    if not args.skip_vllm:
        from bench.lb_kv import kv_reuse

        kv_reuse()
    unauthenticated_memory(args.unauthenticated)


if __name__ == "__main__":
    main()
