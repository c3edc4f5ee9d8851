"""haproxy.cfg for the sticky vLLM load balancer; one renderer for every stack and for tests.

Sticky with bounded load (the seeds' ADR-003, option D) without a state server:
the session key (header, else a hash of Authorization, else the client address) is hashed on a
consistent ring; `hash-balance-factor` makes a backend above F% of the mean load spill the
session to the next backend on the ring. Passive health (`observe layer4`, `error-limit 1`,
`on-error mark-down`) takes a dead backend out on its first refused or failed connection, not after two
failed active checks; active checks on vLLM's /health bring it back. Only connection errors count: an
HTTP status is something a client can provoke (a request vLLM answers with 500), so a 5xx never marks a
server down (issue 32: a tenant took servers out of rotation one by one with such requests); a server
that answers but is broken fails its active checks. `retry-on` + `option redispatch`
retry on another backend a request whose backend refused the connection or died before answering
(the request is buffered for that; replaying a generation has no side effects, and a response that
has started streaming is never replayed). Servers carry weight 100 so that the ring is smooth.

Only the OpenAI routes the stacks serve reach vLLM (ROUTES: chat and text completions, embeddings, the
model list, /health); HAProxy answers every other path with 404 and a wrong method with 405 itself, so
vLLM's unguarded paths (/invocations, /tokenize, /metrics, /scale_elastic_ep, ...) are out of a client's
reach although the balancer sends vLLM's key with each request.

Order of the request rules (issue 32): the key is checked on the headers alone, then the route, and only
then is the body buffered (`http-request wait-for-body`, not `option http-buffer-request`, which waits
for the body before any rule): an unauthenticated client never has its body held in HAProxy's buffers.
A buffered body's `priority` (vLLM's --scheduling-policy priority: lower runs first) below 0 is refused
with 400: interactive requests run at 0 and the batch worker's at a higher value, so a negative one
would jump every queue. The check reads the body as `json_query` does: the first `priority` key within
the buffer (tune.bufsize), so it is a visible refusal where HAProxy can see the key, not the guarantee:
vLLM's own middleware (runtime.vllm_guard) reads the whole body as vLLM does and floors it at 0.

The request log escapes what clients choose (X-Request-ID, the session key) with HAProxy's json
converter, so a header cannot add fields to or break a JSON log line. TLS (when the balancer serves it):
1.2 and 1.3 only, and on 1.2 only ECDHE suites with AEAD ciphers (Mozilla's intermediate profile less
its DHE suites); no CBC, no SHA-1 MAC.

API keys (the stacks always set them): a client sends `Authorization: Bearer <key>`; HAProxy takes
the key's SHA-256 and looks it up in map files of `<sha256 hex> <name>` lines, so no key is stored in
clear. Unknown or missing keys get OpenAI's 401 error; `/health` stays open. Keys are added and
revoked at run time through the admin socket (`python -m runtime.lbkeys`), without a reload. The
backends get vLLM's own key from HAProxy's environment (`${VLLM_API_KEY}`), never from this file.

Several offered models (issue 20): one backend per model (its servers: that model's vLLM server on each
gpu host), each with the same stickiness, health checks, retries and key as the single backend. The
request body's `model` (JSON, read from the buffered body with `json_query`) picks the backend; a model
that is offered but has no usable server now gets 503 with Retry-After at once (never a queue), one not
offered gets 404 naming the offered models, both in OpenAI's error envelope. A request without a JSON
`model` goes to the default model's backend, as with one model. `GET /v1/models` is answered by a Lua
service (render_models_lua): every offered model, `loaded` when its backend has a usable server.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Backend:
    name: str
    address: str  # host:port


@dataclass(frozen=True)
class ModelRoute:
    """An offered model's backend: requests whose body names `served_name` go to `servers`."""

    served_name: str
    servers: tuple[Backend, ...]


# The longest a generation (a streamed response) may take: HAProxy's client and server timeouts.
GENERATION_TIMEOUT_S = 600


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
    generation_timeout_s: int = GENERATION_TIMEOUT_S
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
    # Several offered models: each one's backend, the default model's first (its servers are `backends`);
    # `models_lua` is where the Lua file that answers GET /v1/models lies (render_models_lua).
    models: tuple[ModelRoute, ...] = ()
    models_lua: str | None = None
    # A request's model is read from its body's first tune.bufsize bytes; a longer body whose model lies
    # beyond them goes to the default model's backend (which refuses another model with vLLM's 404).
    model_bufsize: int = 262144


# HAProxy puts weight x 16 points per server on the consistent ring. At the default weight 1 the arcs
# differ so much that, without a bound, one of 4 servers draws 1.24x the mean of uniform sessions and
# the balance factor must spill sessions to correct it; at 100 that is 1.03x (python -m bench.lb).
RING_WEIGHT = 100

# HAProxy log-format for one JSON object per request (HAProxy substitutes the %-variables).
REQUEST_LOG_FIELDS = {
    "time": '"%tr"',
    "service": '"lb"',
    "host": '"%H"',
    # Client-chosen values go through the json converter: a quote or backslash cannot end the string.
    "request_id": '"%[capture.req.hdr(0),json(utf8s)]"',
    "session": '"%[var(txn.session_key),json(utf8s)]"',
    "backend": '"%s"',
    "key": '"%[var(txn.key_name)]"',  # the name of the client's API key, never the key
    "status": "%ST",
    "retries": '"%rc"',  # a string: HAProxy writes "+1" for a redispatched retry, which is no JSON number
    "total_ms": "%Ta",
}
REQUEST_LOG_FORMAT = "'{" + ",".join(f'"{key}":{value}' for key, value in REQUEST_LOG_FIELDS.items()) + "}'"


MAX_BALANCE_FACTOR = 1000

# Passive health: only connection errors (layer 4) count, and the first one marks the server down.
PASSIVE_HEALTH = "observe layer4 error-limit 1 on-error mark-down"

# The routes a client may reach through the balancer (method, paths); everything else HAProxy refuses.
POST_ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")
GET_ROUTES = ("/v1/models",)  # and the health path, open without a key

# TLS 1.2 suites: ECDHE key exchange with AEAD ciphers only (Mozilla intermediate, without DHE);
# TLS 1.3's suites are all AEAD.
TLS12_CIPHERS = ":".join(
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
    )
)
TLS13_SUITES = "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"
BODY_WAIT_S = 30  # as `timeout http-request`: how long an authenticated client may take to send its body


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
    routes = _model_routes(cfg)
    if cfg.sticky:
        balance = (
            f"balance hash var(txn.session_key)\n    hash-type consistent\n    hash-balance-factor {cfg.balance_factor}"
        )
    else:
        balance = "balance roundrobin"
    health = f"inter {cfg.check_interval_ms} fall 2 rise 2 {PASSIVE_HEALTH}"
    header = cfg.session_header
    socket = f"\n    stats socket {cfg.admin_socket} mode 600 level admin" if cfg.admin_socket else ""
    tls = f" ssl crt {cfg.tls_pem} alpn h2,http/1.1" if cfg.tls_pem else ""
    tls_floor = ""
    if cfg.tls_pem:
        tls_floor = (
            "\n    ssl-default-bind-options ssl-min-ver TLSv1.2 no-tls-tickets"
            f"\n    ssl-default-bind-ciphers {TLS12_CIPHERS}"
            f"\n    ssl-default-bind-ciphersuites {TLS13_SUITES}"
        )
    backend_key = ""
    if cfg.backend_key_env:
        backend_key = f'\n    http-request set-header Authorization "Bearer ${{{cfg.backend_key_env}}}"'
    lua = ""
    routing = ""
    if len(routes) > 1:
        lua = f"\n    tune.bufsize {cfg.model_bufsize}"
        if cfg.models_lua:
            lua += f"\n    lua-load {cfg.models_lua}"
        routing = _routing(routes, cfg.models_lua is not None)

    def backend(name: str, members: tuple[Backend, ...], model: str | None) -> str:
        servers = "\n".join(f"    server {b.name} {b.address} check" for b in members)
        comment = f"\n# offered model {model}" if model is not None else ""
        return f"""{comment}
backend {name}
    {balance}
    option httpchk GET {cfg.health_path}
    http-check expect status 200
    # A refused or failed connection marks its server down at once; an HTTP status never does.
    default-server {health} weight {RING_WEIGHT}{backend_key}
{servers}
"""

    if len(routes) > 1:
        blocks = [backend(name, r.servers, r.served_name) for name, r in routes]
    else:
        blocks = [backend("vllm", cfg.backends, None)]
    backend_blocks = "".join(blocks)

    return f"""\
# Rendered by infra/render/haproxy.py - do not edit by hand.
global
    log stdout format raw local0
    maxconn {cfg.maxconn}{socket}{tls_floor}{lua}

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
    retry-on conn-failure empty-response junk-response

frontend openai
    bind {cfg.bind}{tls}
    # One JSON line per request: the batch worker's X-Request-ID, the session and the chosen backend,
    # so a request can be followed from the batch API through the worker to the vLLM server.
    http-request capture req.hdr(X-Request-ID) len 64
    log-format {REQUEST_LOG_FORMAT}{_auth(cfg.api_key_maps, cfg.health_path)}
{_allowed_routes(cfg.health_path)}
    http-request set-var(txn.session_key) req.hdr({header})
    http-request set-var(txn.session_key) req.hdr(Authorization),sha1,hex,lower if !{{ var(txn.session_key) -m found }}
    http-request set-var(txn.session_key) src,ipmask(32) if !{{ var(txn.session_key) -m found }}
    http-response set-header X-LB-Session %[var(txn.session_key)]
    http-response set-header X-LB-Backend %s
{routing}    default_backend vllm
{backend_blocks}
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


def _allowed_routes(health_path: str) -> str:
    """Frontend rules after the key check: only the OpenAI routes reach a backend (404 for another path,
    405 for another method), then the body is buffered and a negative `priority` in it refused."""
    posts, gets = " ".join(POST_ROUTES), " ".join((*GET_ROUTES, health_path))
    not_found = _error_envelope(
        "Not found: this endpoint serves " + ", ".join((*POST_ROUTES, *GET_ROUTES)) + ".",
        "invalid_request_error",
        "path",
        "not_found",
    )
    wrong_method = _error_envelope("Method not allowed on this path.", "invalid_request_error", "method", "method")
    negative = _error_envelope(
        "priority below 0 is reserved: interactive requests run at 0.", "invalid_request_error", "priority", "priority"
    )
    json_type = "content-type application/json"
    return "\n".join(
        (
            "    # Only the OpenAI routes reach vLLM, whose other paths (/invocations, /tokenize, /metrics,",
            "    # /scale_elastic_ep, ...) its key does not guard; HAProxy answers everything else itself.",
            f"    acl openai_post path {posts}",
            f"    acl openai_get path {gets}",
            f"    http-request return status 404 {json_type} string '{not_found}' if !openai_post !openai_get",
            f"    http-request return status 405 {json_type} hdr Allow POST string '{wrong_method}' "
            "if openai_post !METH_POST",
            f"    http-request return status 405 {json_type} hdr Allow \"GET, HEAD\" string '{wrong_method}' "
            "if openai_get !METH_GET",
            "    # The body is buffered only now, for a known key on a served route (retries replay it).",
            f"    http-request wait-for-body time {BODY_WAIT_S}s if METH_POST",
            "    # vLLM runs priority scheduling (lower first): no client may go ahead of interactive requests.",
            "    http-request set-var(txn.priority) req.body,json_query('$.priority') if METH_POST",
            f"    http-request return status 400 {json_type} string '{negative}' "
            "if { var(txn.priority) -m reg '^[[:space:]]*-' }",
        )
    )


MODEL_NOT_LOADED_RETRY_AFTER_S = 10


def backend_name(index: int) -> str:
    """The default model's backend keeps the name `vllm` (dashboards, alerts); the others are vllm-2, vllm-3..."""
    return "vllm" if index == 0 else f"vllm-{index + 1}"


def _model_routes(cfg: LoadBalancerConfig) -> list[tuple[str, ModelRoute]]:
    """(backend name, route) per offered model; one route (the default's) when no models are given."""
    if len(cfg.models) <= 1:
        return [("vllm", ModelRoute("", cfg.backends))]
    if cfg.models[0].servers != cfg.backends:
        raise ValueError("the first model route is the default model's: its servers are `backends`")
    names = [m.served_name for m in cfg.models]
    if len(set(names)) != len(names):
        raise ValueError(f"offered model names must be unique: {names}")
    for route in cfg.models:
        if not route.servers:
            raise ValueError(f"offered model {route.served_name!r} has no servers")
        if not _SAFE_NAME.match(route.served_name):
            raise ValueError(f"offered model name {route.served_name!r} cannot be matched safely by HAProxy")
    return [(backend_name(i), m) for i, m in enumerate(cfg.models)]


def _error_envelope(message: str, type_: str, param: str, code: str) -> str:
    """OpenAI's error envelope as an HAProxy log-format string: `message` may hold %[...] expressions."""
    return f'{{"error":{{"message":"{message}","type":"{type_}","param":"{param}","code":"{code}"}}}}'


def _routing(routes: list[tuple[str, ModelRoute]], lua: bool) -> str:
    """Frontend rules that pick a model's backend by the request body's `model`."""
    names = [r.served_name for _, r in routes]
    offered = ", ".join(names)
    asked = "%[var(txn.model),json(utf8s)]"
    not_offered = _error_envelope(
        f"The model `{asked}` does not exist. Offered models: {offered}.",
        "invalid_request_error",
        "model",
        "model_not_found",
    )
    lines = [
        '    # Offered models: the request body\'s "model" picks its backend (the body is buffered).',
        "    http-request set-var(txn.model) req.body,json_query('$.model') if METH_POST",
        f"    http-request return status 404 content-type application/json lf-string '{not_offered}' "
        f"if {{ var(txn.model) -m found }} !{{ var(txn.model) -m str {' '.join(names)} }}",
    ]
    for backend, route in routes:
        not_loaded = _error_envelope(
            f"The model `{route.served_name}` is offered but no server has it loaded now; retry later.",
            "server_error",
            "model",
            "model_not_loaded",
        )
        lines.append(
            f"    http-request return status 503 content-type application/json "
            f"hdr Retry-After {MODEL_NOT_LOADED_RETRY_AFTER_S} string '{not_loaded}' "
            f"if {{ var(txn.model) -m str {route.served_name} }} {{ nbsrv({backend}) eq 0 }}"
        )
    if lua:
        lines.append(f"    http-request use-service lua.{MODELS_SERVICE} if METH_GET {{ path /v1/models }}")
    for backend, route in routes[1:]:
        lines.append(f"    use_backend {backend} if {{ var(txn.model) -m str {route.served_name} }}")
    return "\n".join(lines) + "\n"


_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]*$")  # infra.config.SERVED_NAME_PATTERN
MODELS_SERVICE = "vllm_gb10_models"
MODELS_OWNER = "vllm-gb10"


def render_models_lua(models: tuple[ModelRoute, ...]) -> str:
    """The Lua service behind `GET /v1/models`: OpenAI's model list of every offered model, each with
    `loaded` (its backend has at least one usable server now: HAProxy's nbsrv)."""
    names = [m.served_name for m in models]
    if len(names) < 2 or any(not _SAFE_NAME.match(n) for n in names):
        raise ValueError(f"the models service is for several safely named offered models, not {names}")
    entries = "\n".join(f'    {{id = "{m.served_name}", backend = "{backend_name(i)}"}},' for i, m in enumerate(models))
    return f"""\
-- Rendered by infra/render/haproxy.py - do not edit by hand.
-- GET /v1/models through the load balancer: every offered model, loaded when its backend has a usable server.
local models = {{
{entries}
}}

core.register_service("{MODELS_SERVICE}", "http", function(applet)
    local created = core.now().sec
    local items = {{}}
    for _, model in ipairs(models) do
        local usable = tonumber(applet.f:nbsrv(model.backend)) or 0
        items[#items + 1] = string.format(
            '{{"id":"%s","object":"model","created":%d,"owned_by":"{MODELS_OWNER}","loaded":%s}}',
            model.id, created, tostring(usable > 0))
    end
    local body = '{{"object":"list","data":[' .. table.concat(items, ",") .. ']}}'
    applet:set_status(200)
    applet:add_header("content-type", "application/json")
    applet:add_header("content-length", tostring(string.len(body)))
    applet:add_header("cache-control", "no-store")
    applet:start_response()
    applet:send(body)
end)
"""
