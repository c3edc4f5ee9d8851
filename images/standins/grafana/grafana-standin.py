"""Grafana stand-in: what our compose file and tests rely on, and nothing else.

Listens on GF_SERVER_HTTP_ADDR (0.0.0.0) : GF_SERVER_HTTP_PORT (3000). GET /api/health answers
without credentials, as Grafana's does; everything else needs basic auth GF_SECURITY_ADMIN_USER
(admin) : GF_SECURITY_ADMIN_PASSWORD (admin). /api/datasources lists the provisioned data sources.
At start it parses every provisioning file (YAML, which includes JSON) and exits 1 if one is bad,
where Grafana would fail to provision.
"""

from __future__ import annotations

import base64
import hmac
import json
import os
import ssl
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import yaml

PROVISIONING = Path(os.environ.get("GF_PATHS_PROVISIONING", "/etc/grafana/provisioning"))


def load_provisioning() -> list[dict[str, object]]:
    """Parse datasources/ and dashboards/ files; returns the data sources, raises SystemExit if bad."""
    datasources: list[dict[str, object]] = []
    for kind in ("datasources", "dashboards"):
        for path in sorted((PROVISIONING / kind).glob("*.y*ml")):
            try:
                doc = yaml.safe_load(path.read_text())
            except (OSError, yaml.YAMLError) as exc:
                raise SystemExit(f"grafana-standin: invalid provisioning file {path}: {exc}") from exc
            if not isinstance(doc, dict):
                raise SystemExit(f"grafana-standin: provisioning file {path} is not a mapping")
            if kind == "datasources":
                datasources += [d for d in doc.get("datasources") or [] if isinstance(d, dict)]
    return datasources


class Handler(BaseHTTPRequestHandler):
    server_version = "grafana-standin"
    expected = ""
    datasources: ClassVar[list[dict[str, object]]] = []

    def _send(self, status: int, body: object, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _authorized(self) -> bool:
        given = self.headers.get("Authorization", "")
        return hmac.compare_digest(given.encode(), self.expected.encode())

    def _handle(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/api/health":
            self._send(200, {"database": "ok", "version": "standin"})
        elif not self._authorized():
            self._send(401, {"message": "Unauthorized"}, {"WWW-Authenticate": 'Basic realm="Grafana"'})
        elif path == "/api/datasources":
            self._send(200, self.datasources)
        else:
            self._send(200, {"message": "grafana stand-in", "path": path})

    def do_GET(self) -> None:
        self._handle()

    def do_HEAD(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def log_message(self, format: str, *args: object) -> None:
        sys.stderr.write("grafana-standin: " + format % args + "\n")


def main() -> None:
    Handler.datasources = load_provisioning()
    user = os.environ.get("GF_SECURITY_ADMIN_USER", "admin")
    password = os.environ.get("GF_SECURITY_ADMIN_PASSWORD", "admin")
    Handler.expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    address = os.environ.get("GF_SERVER_HTTP_ADDR") or "0.0.0.0"
    port = int(os.environ.get("GF_SERVER_HTTP_PORT") or "3000")
    server = ThreadingHTTPServer((address, port), Handler)
    protocol = os.environ.get("GF_SERVER_PROTOCOL") or "http"
    if protocol == "https":  # as Grafana: GF_SERVER_CERT_FILE and GF_SERVER_CERT_KEY, both required
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(os.environ["GF_SERVER_CERT_FILE"], os.environ["GF_SERVER_CERT_KEY"])
        server.socket = context.wrap_socket(server.socket, server_side=True)
    elif protocol != "http":
        raise SystemExit(f"grafana-standin: GF_SERVER_PROTOCOL {protocol!r} is not http or https")
    print(f"grafana-standin: listening on {protocol}://{address}:{port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
