#!/opt/moto/bin/python3
"""`rustfs` stand-in: moto's S3 server behind RustFS's command line and health endpoints.

rustfs [--address [HOST]:PORT] [--console-enable] [--console-address [HOST]:PORT]
       [--access-key KEY] [--secret-key KEY] [DIR...]

As RustFS: the S3 API on --address (else RUSTFS_ADDRESS, else :9000; an empty HOST is every
address), `GET /health` and `GET /health/ready` answer 200 there. Credentials (flags, or
RUSTFS_ACCESS_KEY / RUSTFS_SECRET_KEY) are required to be set, but moto accepts any signature.
Objects live in memory: nothing is kept across restarts. The console is not stood in for.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterable
from typing import Any

HEALTH_PATHS = ("/health", "/health/ready", "/health/live")


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="rustfs")
    parser.add_argument("--address", default=os.environ.get("RUSTFS_ADDRESS", ":9000"))
    parser.add_argument("--console-enable", action="store_true")
    parser.add_argument("--console-address", default=os.environ.get("RUSTFS_CONSOLE_ADDRESS", ":9001"))
    parser.add_argument("--access-key", default=os.environ.get("RUSTFS_ACCESS_KEY"))
    parser.add_argument("--secret-key", default=os.environ.get("RUSTFS_SECRET_KEY"))
    parser.add_argument("volumes", nargs="*", default=os.environ.get("RUSTFS_VOLUMES", "/data").split())
    args = parser.parse_args(argv)
    if not args.access_key or not args.secret_key:
        parser.error("set RUSTFS_ACCESS_KEY and RUSTFS_SECRET_KEY (or --access-key/--secret-key)")
    return args


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return (host.strip("[]") or "0.0.0.0"), int(port)


def with_health(app: Callable[..., Iterable[bytes]]) -> Callable[..., Iterable[bytes]]:
    """RustFS's health endpoints before moto, which would read them as a bucket and a key."""

    def wrapped(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") in ("GET", "HEAD") and environ.get("PATH_INFO") in HEALTH_PATHS:
            body = json.dumps({"status": "ok", "service": "rustfs-standin"}).encode()
            start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
            return [body]
        return app(environ, start_response)

    return wrapped


def main(argv: list[str]) -> None:
    args = parse(argv)
    host, port = split_address(args.address)
    os.environ.setdefault("MOTO_PORT", str(port))
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import run_simple

    print(f"rustfs stand-in (moto S3): listening on {host}:{port}, volumes {args.volumes}", flush=True)
    app = with_health(DomainDispatcherApplication(create_backend_app))
    run_simple(host, port, app, threaded=True, request_handler=MotoRequestHandler)


if __name__ == "__main__":
    main(sys.argv[1:])
