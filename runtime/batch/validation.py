"""Line-by-line validation of a batch input file (OpenAI's rules, with 1-based line numbers).

OpenAI fails a whole batch on any bad line; we do the same by default (`reject`, a 400 naming the
first bad line) or, with `error_file`, send bad lines to the error file and run the rest.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import msgspec

from runtime.batch import json_lines
from runtime.batch.custom_ids import SeenCustomIds
from runtime.batch.models import ENDPOINTS, BatchError

# Deeper lines are refused: the worker parses each line again inside a wrapper, on a deeper stack, and
# a line that only just parsed at intake must not fail the whole job there.
MAX_NESTING = 256


class RequestLine(msgspec.Struct, frozen=True):
    """One accepted input line, as the worker receives it (a msgspec Struct: the worker builds one per
    request, and a frozen dataclass took twice as long)."""

    line: int
    custom_id: str
    url: str
    body: dict[str, Any]

    @staticmethod
    def chunk_line(line: int, raw: bytes) -> bytes:
        """A chunk object's line: the input line as uploaded, wrapped with its number. The line was parsed
        once to check it; encoding its body again cost intake a third of its time."""
        return b'{"line":%d,"request":%s}' % (line, raw.strip())

    @classmethod
    def from_chunk(cls, data: bytes) -> list[RequestLine]:
        """A chunk object's requests. Split on "\\n" alone: an input line may hold a bare "\\r" (JSON
        whitespace), which bytes.splitlines would cut the line at."""
        return [cls.from_json(line) for line in data.split(b"\n") if line.strip()]

    @classmethod
    def from_json(cls, text: str | bytes) -> RequestLine:
        """From a chunk line: `chunk_line`'s, or the older {"line", "custom_id", "url", "body"} form that
        jobs queued before an upgrade still have."""
        data = json_lines.loads(text)
        request = data.get("request", data)
        return cls(line=data["line"], custom_id=request["custom_id"], url=request["url"], body=request["body"])


class FileRejectedError(ValueError):
    """The file as a whole cannot become a batch (too big, too many lines, empty, wrong endpoint)."""

    def __init__(self, error: BatchError):
        super().__init__(error.message)
        self.error = error


@dataclass
class LineValidator:
    """Checks lines in order; remembers custom_ids, the endpoint and the model, so duplicates and a second
    endpoint or model are caught (a batch runs one model, as OpenAI's do)."""

    models: tuple[str, ...]  # the offered models
    endpoint: str | None = None
    model: str | None = None  # the batch's model: the first valid line's
    endpoints: tuple[str, ...] = ENDPOINTS
    max_lines: int = 50_000
    seen: SeenCustomIds = field(default_factory=SeenCustomIds)  # flat in memory however long the file
    requests: int = 0

    def check(self, number: int, raw: bytes | str) -> RequestLine | BatchError | None:
        """A request, an error naming the line, or None for a blank line."""
        # msgspec first: it accepts a subset of what json.loads accepts, with equal values, and refuses
        # invalid UTF-8 (runtime.batch.json_lines); a line it refuses, a blank one or a str takes the stdlib
        # path, whose verdicts and messages are unchanged.
        if isinstance(raw, bytes) and raw.strip():
            data = json_lines.loads_fast(raw)
            if data is not json_lines.UNPARSED:
                self.requests += 1
                self._check_count(number)
                return self._check_value(number, data, raw.count(b"[") + raw.count(b"{"))
        return self._check_slowly(number, raw)

    def _check_slowly(self, number: int, raw: bytes | str) -> RequestLine | BatchError | None:
        """`check` for a line msgspec refused or a str: decoded and parsed by the stdlib, which names the fault."""
        try:
            text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        except UnicodeDecodeError as exc:  # replacing the bytes would silently change the custom_id
            if not raw.strip():
                return None
            self.requests += 1
            self._check_count(number)
            return _error(
                number, "invalid_utf8", f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} at offset {exc.start})"
            )
        if not text.strip():
            return None
        self.requests += 1
        self._check_count(number)
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            return _error(number, "invalid_json_line", f"not valid JSON ({exc.msg} at column {exc.colno})")
        except (ValueError, RecursionError) as exc:  # an integer of over 4300 digits; nesting past the stack
            return _error(number, "invalid_json_line", f"not valid JSON here ({exc})")
        escaped = "\\ud" in text or "\\uD" in text or text is raw  # a str may hold one unescaped
        if escaped and (lone := _lone_surrogate(data)) is not None:
            return _error(
                number,
                "invalid_utf8",
                f"holds {lone!a}, a lone surrogate escape: not Unicode text, so no engine can be sent it as UTF-8",
            )
        return self._check_value(number, data, text.count("[") + text.count("{"))

    def _check_value(self, number: int, data: Any, brackets: int) -> RequestLine | BatchError:
        """The checks of a parsed line; `brackets` counts its "[" and "{" (a cheap bound on its depth)."""
        if brackets > MAX_NESTING and _depth(data) > MAX_NESTING:
            return _error(number, "invalid_json_line", f"nested more than {MAX_NESTING} levels deep")
        if not isinstance(data, dict):
            return _error(number, "invalid_json_line", "a line must be a JSON object")
        custom_id = data.get("custom_id")
        if not isinstance(custom_id, str) or not custom_id:
            return _error(number, "missing_required_parameter", "custom_id is missing or not a string", "custom_id")
        problem = self._request_problem(data, custom_id)
        if problem is not None:
            code, message, param = problem
            return _error(number, code, message, param, custom_id=custom_id)
        return RequestLine(line=number, custom_id=custom_id, url=data["url"], body=data["body"])

    def _check_count(self, number: int) -> None:
        if self.requests > self.max_lines:
            raise FileRejectedError(
                BatchError(
                    code="too_many_requests",
                    line=number,
                    message=f"line {number}: a batch holds at most {self.max_lines} requests",
                )
            )

    def _request_problem(self, data: dict[str, Any], custom_id: str) -> tuple[str, str, str | None] | None:
        """(code, message, param) of what is wrong with a line whose custom_id was read, or None."""
        method = data.get("method", "POST")
        if method != "POST":
            return "invalid_method", f"method must be POST, not {method!r}", "method"
        url = data.get("url")
        if url not in self.endpoints:
            return "invalid_url", f"url {url!r} is not one of {', '.join(self.endpoints)}", "url"
        if self.endpoint is None:
            self.endpoint = url
        elif url != self.endpoint:
            return "mismatched_endpoint", f"url {url!r} differs from the batch's {self.endpoint}", "url"
        body = data.get("body")
        if not isinstance(body, dict):
            return "missing_required_parameter", "body is missing or not an object", "body"
        if body.get("stream"):
            return "streaming_unsupported", "stream=true is not supported in a batch", "body.stream"
        model = body.get("model")
        if model not in self.models:
            return "model_not_found", not_offered(model, self.models), "body.model"
        if self.model is None:
            self.model = model
        elif model != self.model:
            return "mismatched_model", f"model {model!r} differs from the batch's {self.model!r}", "body.model"
        if not self.seen.add(custom_id):  # last: only a line that is otherwise valid claims its custom_id
            return "duplicate_custom_id", f"custom_id {custom_id!r} appears on an earlier line", "custom_id"
        return None

    def close(self) -> None:
        self.seen.close()


def not_offered(model: object, offered: tuple[str, ...]) -> str:
    """What a refusal of a model says: the one asked for and the ones a batch may name."""
    return f"model {model!r} is not offered here (offered: {', '.join(repr(m) for m in offered)})"


def _lone_surrogate(value: object) -> str | None:
    """The first lone surrogate in any string of `value` (keys too), or None. JSON allows a "\\ud800"
    escape; UTF-8 cannot encode what it stands for, so the request could neither be sent nor written."""
    for item, _ in _nodes(value):
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError as exc:
                return item[exc.start]
    return None


def _depth(value: object) -> int:
    """How deeply `value` nests lists and objects."""
    return max((depth for item, depth in _nodes(value) if isinstance(item, dict | list)), default=0)


def _nodes(value: object) -> Iterator[tuple[object, int]]:
    """Every value inside `value` (object keys too) with its depth, `value` itself at 1. No recursion:
    the input decides the depth."""
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        yield item, depth
        if isinstance(item, dict):
            stack.extend((child, depth + 1) for child in item.keys())
            stack.extend((child, depth + 1) for child in item.values())
        elif isinstance(item, list):
            stack.extend((child, depth + 1) for child in item)


def _error(line: int, code: str, message: str, param: str | None = None, *, custom_id: str | None = None) -> BatchError:
    return BatchError(code=code, line=line, param=param, message=f"line {line}: {message}", custom_id=custom_id)
