#!/opt/moto/bin/python3
"""`rustfs` stand-in: moto's S3 server behind RustFS's command line and health endpoints.

rustfs [--address [HOST]:PORT] [--console-enable] [--console-address [HOST]:PORT]
       [--access-key KEY] [--secret-key KEY] [DIR...]

As RustFS: the S3 API on --address (else RUSTFS_ADDRESS, else :9000; an empty HOST is every
address), `GET /health` and `GET /health/ready` answer 200 there. Credentials (flags, or
RUSTFS_ACCESS_KEY / RUSTFS_SECRET_KEY) are required to be set, but moto accepts any signature.
Objects live in memory: nothing is kept across restarts. The console is not stood in for.

RustFS's admin calls that the bucket set-up makes (runtime/batch/s3_users.py: add-canned-policy,
add-user, set-user-or-group-policy, user-info under /rustfs/admin/v3) are answered from memory, for
the root key's signature only (its access key in the Authorization header; the signature itself is
not checked, as moto checks none). The users they make are NOT enforced here: moto serves any key.
What the policies allow and refuse is proven on moto with IAM access control on
(tests/integration/test_s3_scoped_policy.py); the calls against RustFS's source and a recording
(tests/integration/test_s3_users_setup.py).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qsl

HEALTH_PATHS = ("/health", "/health/ready", "/health/live")
ADMIN_PREFIX = "/rustfs/admin/v3/"


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


class Admin:
    """RustFS's user and canned-policy calls, in memory (what the set-up needs, nothing more)."""

    def __init__(self, root_access_key: str):
        self.root = root_access_key
        self.policies: dict[str, Any] = {}
        self.users: dict[str, dict[str, str]] = {}

    def answer(self, method: str, route: str, query: dict[str, str], body: bytes, auth: str) -> tuple[str, Any]:
        if f"Credential={self.root}/" not in auth:
            return "403 Forbidden", {"Code": "AccessDenied", "Message": "admin calls need the root key"}
        if (method, route) == ("PUT", "add-canned-policy"):
            document = json.loads(body or b"{}")
            if not query.get("name") or "Version" not in document:
                return "400 Bad Request", {"Code": "InvalidArgument", "Message": "name and a policy with Version"}
            self.policies[query["name"]] = document
            return "200 OK", {}
        if (method, route) == ("PUT", "add-user"):
            request = json.loads(body or b"{}")
            if not query.get("accessKey") or not request.get("secretKey"):
                return "400 Bad Request", {"Code": "InvalidArgument", "Message": "accessKey and secretKey"}
            user = self.users.setdefault(query["accessKey"], {"policyName": ""})
            user.update(secretKey=request["secretKey"], status=request.get("status", "enabled"))
            return "200 OK", {}
        if (method, route) == ("PUT", "set-user-or-group-policy"):
            user = self.users.get(query.get("userOrGroup", ""))
            if user is None or query.get("policyName") not in self.policies:
                return "404 Not Found", {"Code": "XRustFSAdminNoSuchUserOrPolicy", "Message": str(query)}
            user["policyName"] = query["policyName"]
            return "200 OK", {}
        if (method, route) == ("GET", "user-info"):
            found = self.users.get(query.get("accessKey", ""))
            if found is None:
                return "404 Not Found", {"Code": "XRustFSAdminNoSuchUser", "Message": query.get("accessKey", "")}
            return "200 OK", {"policyName": found["policyName"], "status": found["status"]}
        return "404 Not Found", {"Code": "NotImplemented", "Message": f"{method} {route} is not stood in for"}


def with_admin(app: Callable[..., Iterable[bytes]], admin: Admin) -> Callable[..., Iterable[bytes]]:
    """The admin prefix before moto, which would read it as a bucket named `rustfs`."""

    def wrapped(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if not path.startswith(ADMIN_PREFIX):
            return app(environ, start_response)
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        try:
            status, answer = admin.answer(
                environ.get("REQUEST_METHOD", ""),
                path[len(ADMIN_PREFIX) :],
                dict(parse_qsl(environ.get("QUERY_STRING", ""))),
                body,
                environ.get("HTTP_AUTHORIZATION", ""),
            )
        except ValueError as err:
            status, answer = "400 Bad Request", {"Code": "InvalidArgument", "Message": str(err)}
        data = json.dumps(answer).encode()
        start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
        return [data]

    return wrapped


def main(argv: list[str]) -> None:
    args = parse(argv)
    host, port = split_address(args.address)
    os.environ.setdefault("MOTO_PORT", str(port))
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import run_simple

    print(f"rustfs stand-in (moto S3): listening on {host}:{port}, volumes {args.volumes}", flush=True)
    app = with_health(with_admin(DomainDispatcherApplication(create_backend_app), Admin(args.access_key)))
    run_simple(host, port, app, threaded=True, request_handler=MotoRequestHandler)


if __name__ == "__main__":
    main(sys.argv[1:])
