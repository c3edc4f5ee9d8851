"""haproxy.cfg for the sticky vLLM load balancer; one renderer for every stack and for tests.

Sticky with bounded load (the seeds' ADR-003, option D) without a state server:
the session key (header, else a hash of Authorization, else the client address) is hashed on a
consistent ring; `hash-balance-factor` makes a backend above F% of the mean load spill the
session to the next backend on the ring. Passive health (`observe layer7`, `error-limit 1`,
`on-error mark-down`) takes a dead backend out on its first failed request, not after two failed
active checks; active checks on vLLM's /health bring it back. `retry-on` + `option redispatch`
retry on another backend a request whose backend refused the connection or died before answering
(the request is buffered for that; replaying a generation has no side effects, and a response that
has started streaming is never replayed). Servers carry weight 100 so that the ring is smooth.

API keys (the stacks always set them): a client sends `Authorization: Bearer <key>`; HAProxy takes
the key's SHA-256 and looks it up in map files of `<sha256 hex> <name>` lines, so no key is stored in
clear. Unknown or missing keys get OpenAI's 401 error; `/health` stays open. Keys are added and
revoked at run time through the admin socket (`python -m runtime.lbkeys`), without a reload. The
backends get vLLM's own key from HAProxy's environment (`${VLLM_API_KEY}`), never from this file.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Backend:
    name: str
    address: str  # host:port


@dataclass(frozen=True)
class LoadBalancerConfig:
    backends: tuple[Backend, ...]
    bind: str = "*:8080"
    stats_bind: str = "*:8404"
    balance_factor: int = 150
    session_header: str = "X-Session-ID"
    health_path: str = "/health"
    check_interval_ms: int = 2000
    connect_timeout_s: int = 5
    # vLLM generations and streamed responses run long: no client/server timeout shorter than that.
    generation_timeout_s: int = 600
    maxconn: int = 4096
    # False renders `balance roundrobin`: only the benchmark's peer, to measure what stickiness buys.
    sticky: bool = True
    # Map files of `<sha256 hex of a key> <name>` lines; empty: no client key needed (tests, benchmarks).
    api_key_maps: tuple[str, ...] = ()
    # HAProxy's admin socket: `add map` / `del map` change the keys at run time (runtime.lbkeys).
    admin_socket: str | None = None
    # An environment variable of HAProxy holding vLLM's own API key, sent to the backends as Bearer.
    backend_key_env: str | None = None
    # Certificate and key in one PEM file: the client frontend speaks TLS (1.2 and up) with it.
    tls_pem: str | None = None


# HAProxy puts weight x 16 points per server on the consistent ring. At the default weight 1 the arcs
# differ so much that, without a bound, one of 4 servers draws 1.24x the mean of uniform sessions and
# the balance factor must spill sessions to correct it; at 100 that is 1.03x (python -m bench.lb).
RING_WEIGHT = 100

# HAProxy log-format for one JSON object per request (HAProxy substitutes the %-variables).
REQUEST_LOG_FIELDS = {
    "time": '"%tr"',
    "service": '"lb"',
    "host": '"%H"',
    "request_id": '"%[capture.req.hdr(0)]"',
    "session": '"%[var(txn.session_key)]"',
    "backend": '"%s"',
    "key": '"%[var(txn.key_name)]"',  # the name of the client's API key, never the key
    "status": "%ST",
    "retries": '"%rc"',  # a string: HAProxy writes "+1" for a redispatched retry, which is no JSON number
    "total_ms": "%Ta",
}
REQUEST_LOG_FORMAT = "'{" + ",".join(f'"{key}":{value}' for key, value in REQUEST_LOG_FIELDS.items()) + "}'"


MAX_BALANCE_FACTOR = 1000


def check_balance_factor(factor: int) -> int:
    """The one rule for hash-balance-factor, for the stack config, the CLI and the renderer: 0 (no bound)
    or 101..1000 (HAProxy takes up to 65535, but past 10x the mean there is no bound worth the name)."""
    if factor != 0 and not 100 < factor <= MAX_BALANCE_FACTOR:
        raise ValueError(f"balance factor {factor}: use 0 (no bound) or 101..{MAX_BALANCE_FACTOR}")
    return factor


def render_haproxy_cfg(cfg: LoadBalancerConfig) -> str:
    if not cfg.backends:
        raise ValueError("the load balancer needs at least one backend")
    names = [b.name for b in cfg.backends]
    if len(set(names)) != len(names):
        raise ValueError(f"backend names must be unique: {names}")
    check_balance_factor(cfg.balance_factor)
    servers = "\n".join(f"    server {b.name} {b.address} check" for b in cfg.backends)
    if cfg.sticky:
        balance = (
            f"balance hash var(txn.session_key)\n    hash-type consistent\n    hash-balance-factor {cfg.balance_factor}"
        )
    else:
        balance = "balance roundrobin"
    health = f"inter {cfg.check_interval_ms} fall 2 rise 2 observe layer7 error-limit 1 on-error mark-down"
    header = cfg.session_header
    socket = f"\n    stats socket {cfg.admin_socket} mode 600 level admin" if cfg.admin_socket else ""
    tls = f" ssl crt {cfg.tls_pem} alpn h2,http/1.1" if cfg.tls_pem else ""
    tls_floor = "\n    ssl-default-bind-options ssl-min-ver TLSv1.2 no-tls-tickets" if cfg.tls_pem else ""
    backend_key = ""
    if cfg.backend_key_env:
        backend_key = f'\n    http-request set-header Authorization "Bearer ${{{cfg.backend_key_env}}}"'

    return f"""\
# Rendered by infra/render/haproxy.py - do not edit by hand.
global
    log stdout format raw local0
    maxconn {cfg.maxconn}{socket}{tls_floor}

defaults
    mode http
    log global
    option httplog
    option dontlognull
    timeout connect {cfg.connect_timeout_s}s
    timeout client {cfg.generation_timeout_s}s
    timeout server {cfg.generation_timeout_s}s
    timeout http-request 30s
    timeout queue 60s
    timeout tunnel 1h
    retries 3
    option redispatch 1
    option http-buffer-request
    retry-on conn-failure empty-response junk-response

frontend openai
    bind {cfg.bind}{tls}
    # One JSON line per request: the batch worker's X-Request-ID, the session and the chosen backend,
    # so a request can be followed from the batch API through the worker to the vLLM server.
    http-request capture req.hdr(X-Request-ID) len 64
    log-format {REQUEST_LOG_FORMAT}{_auth(cfg.api_key_maps, cfg.health_path)}
    http-request set-var(txn.session_key) req.hdr({header})
    http-request set-var(txn.session_key) req.hdr(Authorization),sha1,hex,lower if !{{ var(txn.session_key) -m found }}
    http-request set-var(txn.session_key) src,ipmask(32) if !{{ var(txn.session_key) -m found }}
    http-response set-header X-LB-Session %[var(txn.session_key)]
    http-response set-header X-LB-Backend %s
    default_backend vllm

backend vllm
    {balance}
    option httpchk GET {cfg.health_path}
    http-check expect status 200
    # A failed request (refused connection, reset, 5xx other than 501/505) marks its server down at once.
    default-server {health} weight {RING_WEIGHT}{backend_key}
{servers}

frontend stats
    bind {cfg.stats_bind}
    http-request use-service prometheus-exporter if {{ path /metrics }}
    stats enable
    stats uri /stats
    stats refresh 10s
"""


UNAUTHORIZED = (
    '{"error":{"message":"Missing or unknown API key (Authorization: Bearer ...).",'
    '"type":"invalid_request_error","param":null,"code":"invalid_api_key"}}'
)


def _auth(maps: tuple[str, ...], health_path: str) -> str:
    """Frontend rules: a known key's name in txn.key_name, else OpenAI's 401 (the health path stays open)."""
    if not maps:
        return ""
    lines = [
        "",
        "    # API keys: the SHA-256 of the Bearer key, looked up in the key maps (no key is stored in clear).",
        "    http-request set-var(txn.key_hash) req.hdr(Authorization),regsub(^[Bb]earer\\ +,),"
        "digest(sha256),hex,lower",
    ]
    for path in maps:
        lines.append(
            f"    http-request set-var(txn.key_name) var(txn.key_hash),map({path}) if !{{ var(txn.key_name) -m found }}"
        )
    lines.append(
        f"    http-request return status 401 content-type application/json hdr WWW-Authenticate Bearer "
        f"string '{UNAUTHORIZED}' if !{{ path {health_path} }} !{{ var(txn.key_name) -m found }}"
    )
    return "\n".join(lines)
