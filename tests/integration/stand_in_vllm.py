"""A loopback endpoint that answers like vLLM's OpenAI server and can be switched into an outage.

It serves what the batch worker's http engine uses, in vLLM's shapes: GET /health, GET /v1/models
(the served models) and POST /v1/chat/completions (a chat completion; 400 BadRequestError when
max_tokens exceeds the context, 404 NotFoundError "The model `m` does not exist." for a model it does
not serve). The outages a day-two change causes:

- `refuse`: the listener is closed (connection refused), and a request already accepted is reset;
- `unavailable`: every path answers 503 (a load balancer with no usable server, vLLM restarting);
- `swapped`: another model is served in place of the job's (404 for it, /v1/models without it);
- `unloaded`: as the load balancer answers while the model's servers restart (503 `model_not_loaded`
  with Retry-After, and /v1/models listing the model with `"loaded": false`).

`trip_after(n, outage)` starts an outage right after the n-th answered completion, from inside the
server, so the outage lands mid-job however fast the worker runs. `serve()` ends it (the same port).
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

from harness.servers import free_port

Mode = Literal["serve", "refuse", "unavailable", "swapped", "unloaded"]
MAX_MODEL_LEN = 512


class StandInVllm:
    def __init__(self, model: str):
        self.model = model
        self.port = free_port()
        self.mode: Mode = "serve"
        self.answered = 0  # completions answered 200
        self.hits: Counter[str] = Counter()  # completions asked for, by custom_id (the X-Session-ID header)
        self._trip: tuple[int, Mode] | None = None
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._closer: threading.Thread | None = None
        self._listen()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def trip_after(self, answers: int, outage: Mode) -> None:
        with self._lock:
            self._trip = (answers, outage)

    def serve(self) -> None:
        """End the outage: answer again, on the same port."""
        with self._lock:
            self._trip = None
            self.mode = "serve"
            closer = self._closer
        if closer is not None:
            closer.join()
            self._closer = None
            self._listen()

    def close(self) -> None:
        with self._lock:
            server, self._server = self._server, None
        if self._closer is not None:
            self._closer.join()
        if server is not None:
            server.shutdown()
            server.server_close()

    def _switch(self, outage: Mode) -> None:
        """Called with the lock held."""
        self.mode = outage
        if outage == "refuse" and self._server is not None:
            server, self._server = self._server, None
            self._closer = threading.Thread(target=lambda: (server.shutdown(), server.server_close()), daemon=True)
            self._closer.start()

    def _listen(self) -> None:
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                mode = stand_in._mode_for_request(self)
                if mode is None:
                    return
                if mode == "unavailable":
                    self._reply(503, {"error": {"message": "Service Unavailable", "code": 503}})
                elif self.path == "/health":
                    self._reply(200, None)
                elif self.path == "/v1/models":
                    served = "other-model" if mode == "swapped" else stand_in.model
                    card: dict[str, Any] = {"id": served, "object": "model", "created": 0, "owned_by": "vllm"}
                    if mode == "unloaded":
                        card["loaded"] = False  # only the load balancer's list has the field
                    self._reply(200, {"object": "list", "data": [card]})
                else:
                    self._reply(404, {"detail": "Not Found"})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with stand_in._lock:
                    stand_in.hits[self.headers.get("X-Session-ID", "")] += 1
                mode = stand_in._mode_for_request(self)
                if mode is None:
                    return
                model = body.get("model")
                if mode == "unavailable":
                    self._reply(503, {"error": {"message": "Service Unavailable", "code": 503}})
                elif mode == "unloaded":
                    message = f"The model `{model}` is offered but no server has it loaded now; retry later."
                    self._reply(503, _error(message, "server_error", 503, param="model", code="model_not_loaded"))
                elif mode == "swapped" or model != stand_in.model:
                    message = f"The model `{model}` does not exist."
                    self._reply(404, _error(message, "NotFoundError", 404, param="model"))
                elif body.get("max_tokens", 16) >= MAX_MODEL_LEN:
                    message = f"This model's maximum context length is {MAX_MODEL_LEN} tokens."
                    self._reply(400, _error(message, "BadRequestError", 400))
                else:
                    self._reply(200, _completion(model))
                    stand_in._answered()

            def _reply(self, status: int, body: dict[str, Any] | None) -> None:
                data = json.dumps(body).encode() if body is not None else b""
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if request_id := self.headers.get("X-Request-ID"):
                    self.send_header("X-Request-ID", request_id)  # vLLM echoes it
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *_args: object) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        with self._lock:
            self._server = server
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def _mode_for_request(self, handler: BaseHTTPRequestHandler) -> Mode | None:
        """The mode to answer in; None when the connection was reset instead (refusing)."""
        with self._lock:
            mode = self.mode
        if mode == "refuse":  # accepted before the listener closed: dies with the server, as vLLM's would
            handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            handler.close_connection = True
            handler.connection.close()
            return None
        return mode

    def _answered(self) -> None:
        with self._lock:
            self.answered += 1
            if self._trip is not None and self.answered >= self._trip[0]:
                self._switch(self._trip[1])
                self._trip = None


def _error(message: str, kind: str, status: int, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code or status}}


def _completion(model: str) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{time.monotonic_ns()}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "ok", "tool_calls": []},
                "logprobs": None,
                "finish_reason": "stop",
                "stop_reason": None,
            }
        ],
        "usage": {"prompt_tokens": 5, "total_tokens": 6, "completion_tokens": 1, "prompt_tokens_details": None},
        "prompt_logprobs": None,
    }
