"""Line-by-line validation of a batch input file (OpenAI's rules, with 1-based line numbers).

OpenAI fails a whole batch on any bad line; we do the same by default (`reject`, a 400 naming the
first bad line) or, with `error_file`, send bad lines to the error file and run the rest.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from runtime.batch.models import ENDPOINTS, BatchError


@dataclass(frozen=True)
class RequestLine:
    """One accepted input line, as the worker receives it."""

    line: int
    custom_id: str
    url: str
    body: dict[str, Any]

    def to_json(self) -> str:
        return json.dumps({"line": self.line, "custom_id": self.custom_id, "url": self.url, "body": self.body})

    @classmethod
    def from_json(cls, text: str | bytes) -> RequestLine:
        data = json.loads(text)
        return cls(line=data["line"], custom_id=data["custom_id"], url=data["url"], body=data["body"])


class FileRejectedError(ValueError):
    """The file as a whole cannot become a batch (too big, too many lines, empty, wrong endpoint)."""

    def __init__(self, error: BatchError):
        super().__init__(error.message)
        self.error = error


@dataclass
class LineValidator:
    """Checks lines in order; remembers custom_ids and the endpoint so duplicates are caught."""

    model: str
    endpoint: str | None = None
    endpoints: tuple[str, ...] = ENDPOINTS
    max_lines: int = 50_000
    seen: set[str] = field(default_factory=set)
    requests: int = 0

    def check(self, number: int, raw: bytes | str) -> RequestLine | BatchError | None:
        """A request, an error naming the line, or None for a blank line."""
        text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
        if not text.strip():
            return None
        self.requests += 1
        if self.requests > self.max_lines:
            raise FileRejectedError(
                BatchError(
                    code="too_many_requests",
                    line=number,
                    message=f"line {number}: a batch holds at most {self.max_lines} requests",
                )
            )
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            return _error(number, "invalid_json_line", f"not valid JSON ({exc.msg} at column {exc.colno})")
        if not isinstance(data, dict):
            return _error(number, "invalid_json_line", "a line must be a JSON object")
        custom_id = data.get("custom_id")
        if not isinstance(custom_id, str) or not custom_id:
            return _error(number, "missing_required_parameter", "custom_id is missing or not a string", "custom_id")
        if custom_id in self.seen:
            return _error(number, "duplicate_custom_id", f"custom_id {custom_id!r} appears on an earlier line")
        method = data.get("method", "POST")
        if method != "POST":
            return _error(number, "invalid_method", f"method must be POST, not {method!r}", "method")
        url = data.get("url")
        if url not in self.endpoints:
            return _error(number, "invalid_url", f"url {url!r} is not one of {', '.join(self.endpoints)}", "url")
        if self.endpoint is None:
            self.endpoint = url
        elif url != self.endpoint:
            return _error(number, "mismatched_endpoint", f"url {url!r} differs from the batch's {self.endpoint}")
        body = data.get("body")
        if not isinstance(body, dict):
            return _error(number, "missing_required_parameter", "body is missing or not an object", "body")
        if body.get("stream"):
            return _error(number, "streaming_unsupported", "stream=true is not supported in a batch", "body.stream")
        if body.get("model") != self.model:
            return _error(
                number, "model_not_found", f"model {body.get('model')!r} is not served here (use {self.model!r})"
            )
        self.seen.add(custom_id)
        return RequestLine(line=number, custom_id=custom_id, url=url, body=body)


def _error(line: int, code: str, message: str, param: str | None = None) -> BatchError:
    return BatchError(code=code, line=line, param=param, message=f"line {line}: {message}")
