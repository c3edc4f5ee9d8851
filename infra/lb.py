"""Print the load balancer's haproxy.cfg for the given backends (tests, benchmarks, debugging).

`python -m infra.lb --backend HOST:PORT [--backend HOST:PORT ...] --port N [--balance-factor F]
[--round-robin] [--api-key-map PATH ...] [--admin-socket PATH] [--backend-key-env VAR]`
uses the same renderer as both stacks (infra/render/haproxy.py).
"""

from __future__ import annotations

import argparse
import ipaddress
import sys

from infra.render.haproxy import Backend, LoadBalancerConfig, check_balance_factor, render_haproxy_cfg


def backend_address(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"{value!r} is not HOST:PORT")
    return value


def balance_factor(value: str) -> int:
    try:
        return check_balance_factor(int(value))
    except ValueError as exc:
        message = str(exc) if value.lstrip("-").isdigit() else f"{value!r} is not an integer"
        raise argparse.ArgumentTypeError(message) from None


def bind_address(value: str) -> str:
    if value != "*":
        ipaddress.ip_address(value)
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m infra.lb", description=__doc__.splitlines()[0])
    parser.add_argument("--backend", action="append", type=backend_address, required=True, metavar="HOST:PORT")
    parser.add_argument("--port", type=int, required=True, help="frontend port for OpenAI clients")
    parser.add_argument("--address", type=bind_address, default="127.0.0.1", help="bind address (* for all)")
    parser.add_argument("--stats-port", type=int, default=8404, help="stats page and /metrics port")
    parser.add_argument("--balance-factor", type=balance_factor, default=150, help="hash-balance-factor; 0: off")
    parser.add_argument("--session-header", default="X-Session-ID")
    parser.add_argument("--check-interval-ms", type=int, default=2000, help="health check interval")
    parser.add_argument("--round-robin", action="store_true", help="no stickiness (the benchmark's peer)")
    parser.add_argument(
        "--api-key-map", action="append", default=[], metavar="PATH", help="map of '<sha256> <name>' key lines"
    )
    parser.add_argument("--admin-socket", metavar="PATH", help="HAProxy's admin socket (keys changed at run time)")
    parser.add_argument("--backend-key-env", metavar="VAR", help="HAProxy env var holding vLLM's own API key")
    parser.add_argument("--tls-pem", metavar="PATH", help="certificate and key in one PEM: clients over TLS")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    config = LoadBalancerConfig(
        backends=tuple(Backend(f"vllm{i}", address) for i, address in enumerate(args.backend, start=1)),
        bind=f"{args.address}:{args.port}",
        stats_bind=f"{args.address}:{args.stats_port}",
        balance_factor=args.balance_factor,
        session_header=args.session_header,
        check_interval_ms=args.check_interval_ms,
        sticky=not args.round_robin,
        api_key_maps=tuple(args.api_key_map),
        admin_socket=args.admin_socket,
        backend_key_env=args.backend_key_env,
        tls_pem=args.tls_pem,
    )
    sys.stdout.write(render_haproxy_cfg(config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
