"""A stand-in vLLM backend for load balancer tests and benchmarks.

Answers GET /health and POST /v1/* with {"backend": name, "inflight": n, "path": ...}, after an optional
delay (--delay-ms, or the X-Delay-Ms request header). Prints "ready <port>" once listening.
Errors as vLLM gives them to a client: POST /scale_elastic_ep answers 500 (vLLM on a single-engine
server), and any POST answers the status its X-Status header names (a request vLLM fails with a 5xx).
`python -m bench.lb_backend --name a --port 9001 [--delay-ms 20]`
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Backend(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # health checkers and killed clients reset connections; that is not an error here

    def __init__(self, port: int, name: str, delay_ms: float):
        super().__init__(("127.0.0.1", port), Handler)
        self.name, self.delay_ms = name, delay_ms
        self.lock = threading.Lock()
        self.inflight = 0


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # One write per response (handle_one_request flushes the buffer once the handler returns): a backend
    # killed mid-response could otherwise leave the client its headers without the body, which no
    # balancer can retry; a vLLM server killed mid-generation is another test's subject.
    wbufsize = 64 * 1024
    disable_nagle_algorithm = True
    server: Backend

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _reply(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path == "/health":
            self._reply(200, {"status": "ok"})
        else:  # vLLM answers many GET paths (/v1/models, /metrics, /version, ...): any path here
            self._reply(200, {"backend": self.server.name, "path": self.path})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        with self.server.lock:
            self.server.inflight += 1
            inflight = self.server.inflight
        try:
            status = int(self.headers.get("X-Status") or 200)
            if self.path == "/scale_elastic_ep":
                status = 500
            if status != 200:
                self._reply(status, {"error": {"message": "stand-in error", "code": status}, "path": self.path})
                return
            delay = float(self.headers.get("X-Delay-Ms") or self.server.delay_ms)
            if delay:
                time.sleep(delay / 1000)
            # The Authorization the backend got: the load balancer swaps the client's key for vLLM's own.
            authorization = self.headers.get("Authorization")
            body = {"backend": self.server.name, "inflight": inflight, "authorization": authorization}
            body["path"] = self.path
            self._reply(200, body)
        finally:
            with self.server.lock:
                self.server.inflight -= 1


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--name", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay-ms", type=float, default=0.0)
    args = parser.parse_args()
    server = Backend(args.port, args.name, args.delay_ms)
    print(f"ready {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
