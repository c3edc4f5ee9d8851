"""Every rule of the input validator, each with the line number it must name."""

from __future__ import annotations

import json

import pytest

from runtime.batch.custom_ids import SeenCustomIds
from runtime.batch.models import BatchError
from runtime.batch.validation import MAX_NESTING, FileRejectedError, LineValidator, RequestLine
from runtime.batch.webhooks import sign, verify


def line(custom_id="a", url="/v1/chat/completions", model="m", **extra) -> str:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra.pop("body", {})}
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": url, "body": body, **extra})


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("{not json", "invalid_json_line"),
        ("[1, 2]", "invalid_json_line"),
        (
            json.dumps({"method": "POST", "url": "/v1/chat/completions", "body": {"model": "m"}}),
            "missing_required_parameter",
        ),
        (line(url="/v1/images/generations"), "invalid_url"),
        (line(method="GET"), "invalid_method"),
        (line(model="other"), "model_not_found"),
        (line(body={"stream": True}), "streaming_unsupported"),
        (json.dumps({"custom_id": "a", "method": "POST", "url": "/v1/chat/completions"}), "missing_required_parameter"),
    ],
)
@pytest.mark.parametrize("as_bytes", [False, True], ids=["str", "bytes"])  # bytes: what intake reads (msgspec)
def test_bad_line_is_named_with_its_number(raw: str, code: str, as_bytes: bool) -> None:
    validator = LineValidator(models=("m",))
    assert isinstance(validator.check(1, line("first")), RequestLine)
    error = validator.check(2, raw.encode() if as_bytes else raw)
    assert isinstance(error, BatchError)
    assert (error.code, error.line) == (code, 2)
    assert error.message.startswith("line 2: ")


def test_lines_msgspec_refuses_get_the_stdlib_verdict_on_the_fast_path() -> None:
    """Intake parses bytes with msgspec and hands what it refuses to json.loads: each verdict and message
    is the one the stdlib path gave before msgspec."""
    validator = LineValidator(models=("m",))
    nan = line("nan").replace('"hi"', "NaN").encode()  # json.loads takes NaN; intake always did
    assert isinstance(validator.check(1, nan), RequestLine)
    bom = validator.check(2, b"\xef\xbb\xbf" + line("bom").encode())
    assert bom.code == "invalid_json_line" and "BOM" in bom.message
    big = validator.check(3, line("big", body={"seed": 1}).replace('"seed": 1', '"seed": ' + "9" * 5000).encode())
    assert big.code == "invalid_json_line" and "4300" in big.message
    latin1 = validator.check(4, line("caf\u00e9").encode()[:-3] + b"\xe9}}")
    assert latin1.code == "invalid_utf8" and latin1.line == 4
    assert validator.check(5, "\u00a0 ".encode()) is None  # a blank line in Unicode's sense is skipped
    pair = line("x").replace('"hi"', '"\\ud83d\\ude00"').encode()  # one character, escaped as a UTF-16 pair
    assert validator.check(6, pair).body["messages"][0]["content"] == "\U0001f600"
    assert validator.requests == 5  # the blank line is no request


def test_duplicate_custom_id_and_mixed_endpoints() -> None:
    validator = LineValidator(models=("m",))
    assert isinstance(validator.check(1, line("x")), RequestLine)
    assert validator.check(2, line("x")).code == "duplicate_custom_id"
    assert validator.check(3, line("y", url="/v1/embeddings")).code == "mismatched_endpoint"
    assert validator.check(4, "   ") is None  # blank lines are skipped, numbering continues
    assert validator.check(5, line("z")).line == 5


def test_a_batch_names_one_offered_model_and_a_refusal_names_the_offered_ones() -> None:
    validator = LineValidator(models=("a", "b"))
    assert isinstance(validator.check(1, line("x", model="b")), RequestLine)
    assert validator.model == "b"  # the batch's model is its first line's
    mixed = validator.check(2, line("y", model="a"))
    assert isinstance(mixed, BatchError)
    assert (mixed.code, mixed.param, mixed.message) == (
        "mismatched_model",
        "body.model",
        "line 2: model 'a' differs from the batch's 'b'",
    )
    unknown = validator.check(3, line("z", model="gpt-4o"))
    assert isinstance(unknown, BatchError)
    assert (unknown.code, unknown.message) == (
        "model_not_found",
        "line 3: model 'gpt-4o' is not offered here (offered: 'a', 'b')",
    )


def test_a_model_given_up_front_binds_every_line() -> None:
    validator = LineValidator(models=("a", "b"), model="a")
    error = validator.check(1, line("x", model="b"))
    assert isinstance(error, BatchError) and error.code == "mismatched_model"


def test_invalid_utf8_is_refused_with_its_line_not_replaced() -> None:
    validator = LineValidator(models=("m",))
    assert isinstance(validator.check(1, line("first").encode()), RequestLine)
    # "caf\xe9" in Latin-1: replacing the byte would turn the custom_id into "caf\ufffd", silently
    latin1 = line("first").replace('"first"', '"caf\u00e9"').encode("latin-1")
    error = validator.check(2, latin1)
    assert isinstance(error, BatchError)
    assert (error.code, error.line) == ("invalid_utf8", 2)
    assert "byte 0xe9" in error.message
    assert isinstance(validator.check(3, latin1.decode("latin-1").encode()), RequestLine)  # in UTF-8 it is fine


@pytest.mark.parametrize("as_bytes", [False, True], ids=["str", "bytes"])
def test_a_lone_surrogate_is_refused_with_its_line_not_a_crash(as_bytes: bool) -> None:
    """Valid JSON, but not Unicode text: no engine can be sent it as UTF-8 (httpx raised in the worker and
    failed the whole job), so intake names the line instead."""
    validator = LineValidator(models=("m",))
    in_custom_id = line("first").replace('"first"', '"\\ud800"')
    in_a_key = line("x", body={"k": 1}).replace('"k"', '"\\uDC01"')
    unescaped = line("y").replace('"hi"', '"\ud800"')  # only a str can hold it unescaped
    for number, text in enumerate((in_custom_id, in_a_key, unescaped), start=1):
        if as_bytes and text is unescaped:
            continue  # its bytes are invalid UTF-8, refused as such
        error = validator.check(number, text.encode() if as_bytes else text)
        assert isinstance(error, BatchError) and (error.code, error.line) == ("invalid_utf8", number)
        assert "lone surrogate" in error.message and error.message.isascii()
    assert isinstance(validator.check(4, line("first")), RequestLine)  # the refused lines claimed no id


def test_an_error_keeps_the_custom_id_it_could_read_for_the_error_file() -> None:
    validator = LineValidator(models=("m",))
    assert validator.check(1, line("mine", model="other")).custom_id == "mine"
    assert validator.check(2, "{not json").custom_id is None
    assert "custom_id" not in validator.check(3, line("x", method="GET")).model_dump()  # not in OpenAI's object


def test_a_refused_line_does_not_claim_its_custom_id() -> None:
    validator = LineValidator(models=("m",))
    assert validator.check(1, line("x", method="GET")).code == "invalid_method"  # goes to the error file
    assert isinstance(validator.check(2, line("x")), RequestLine)  # so the id is still free
    assert validator.check(3, line("x", method="GET")).code == "invalid_method"  # its own fault comes first
    assert validator.check(4, line("x")).code == "duplicate_custom_id"


def test_duplicates_are_found_after_the_ids_outgrow_sqlite_page_cache() -> None:
    seen = SeenCustomIds(page_cache_kib=64)
    try:
        count = 40_000  # 8 bytes each and the B-tree's room: several times a 64 KiB cache, so most pages spilled
        assert all(seen.add(f"req-{i}") for i in range(count))
        assert not seen.add("req-0") and not seen.add(f"req-{count - 1}") and not seen.add(f"req-{count // 2}")
        assert seen.add(f"req-{count}")
        assert seen.add("\ud800") and not seen.add("\ud800")  # a lone surrogate neither crashes nor repeats
    finally:
        seen.close()


def test_a_chunk_line_carries_the_input_line_as_uploaded() -> None:
    raw = line("c-1", body={"max_tokens": 7, "seed": 2**70}).encode() + b"\r"  # an int no float can hold
    request = RequestLine.from_json(RequestLine.chunk_line(12, raw))
    assert (request.line, request.custom_id, request.url) == (12, "c-1", "/v1/chat/completions")
    assert request.body == json.loads(raw)["body"] and request.body["seed"] == 2**70


def test_a_bare_carriage_return_inside_a_line_stays_in_its_request() -> None:
    # JSON whitespace, and an http(s) source splits on "\n" only: the chunk must not be cut at the "\r"
    first = line("a").replace('"url"', '\r"url"').encode()
    second = line("b").encode()
    validator = LineValidator(models=("m",))
    assert isinstance(validator.check(1, first), RequestLine) and isinstance(validator.check(2, second), RequestLine)
    chunk = b"\n".join([RequestLine.chunk_line(1, first), RequestLine.chunk_line(2, second)])
    assert [(r.line, r.custom_id) for r in RequestLine.from_chunk(chunk)] == [(1, "a"), (2, "b")]


@pytest.mark.parametrize("as_bytes", [False, True], ids=["str", "bytes"])  # bytes take msgspec's path
def test_json_that_python_cannot_hold_is_a_bad_line_not_a_crash(as_bytes: bool) -> None:
    def nested(depth: int) -> str | bytes:  # the line's object is level 1, its body level 2, then lists
        text = line(f"deep-{depth}", body={"metadata": json.loads("[" * (depth - 2) + "]" * (depth - 2))})
        return text.encode() if as_bytes else text

    validator = LineValidator(models=("m",))
    huge = line("big").replace('"hi"', '"hi", "n": ' + "9" * 5000)
    assert (validator.check(1, huge).code, validator.check(1, huge).line) == ("invalid_json_line", 1)
    too_deep = validator.check(2, nested(MAX_NESTING + 1))
    assert isinstance(too_deep, BatchError) and too_deep.message == "line 2: nested more than 256 levels deep"
    past_the_stack = '{"custom_id": "x", "body": ' + "[" * 100_000 + "]" * 100_000 + "}"
    assert validator.check(3, past_the_stack.encode() if as_bytes else past_the_stack).code == "invalid_json_line"
    assert isinstance(validator.check(4, nested(MAX_NESTING)), RequestLine)


def test_a_chunk_line_written_before_the_upgrade_still_reads() -> None:
    old = json.dumps({"line": 3, "custom_id": "a", "url": "/v1/embeddings", "body": {"model": "m", "input": "x"}})
    assert RequestLine.from_json(old) == RequestLine(3, "a", "/v1/embeddings", {"model": "m", "input": "x"})


def test_endpoint_not_served_by_the_engine_is_refused() -> None:
    validator = LineValidator(models=("m",), endpoints=("/v1/chat/completions",))
    assert validator.check(1, line(url="/v1/completions")).code == "invalid_url"


def test_too_many_lines_rejects_the_file() -> None:
    validator = LineValidator(models=("m",), max_lines=2)
    validator.check(1, line("a"))
    validator.check(2, line("b"))
    with pytest.raises(FileRejectedError, match="line 3: a batch holds at most 2 requests"):
        validator.check(3, line("c"))


def test_webhook_signature_round_trip() -> None:
    body = b'{"type":"batch.completed"}'
    signature = sign("secret", 1700000000, body)
    assert signature.startswith("sha256=")
    assert verify("secret", 1700000000, body, signature, now=1700000000)
    assert not verify("secret", 1700000001, body, signature, now=1700000000)
    assert not verify("other", 1700000000, body, signature, now=1700000000)


def test_a_replayed_webhook_delivery_is_refused_after_the_tolerance() -> None:
    body = b'{"type":"batch.completed"}'
    signature = sign("secret", 1700000000, body)
    assert verify("secret", 1700000000, body, signature, now=1700000000 + 299)
    assert not verify("secret", 1700000000, body, signature, now=1700000000 + 301)  # replayed 5 min later
    assert not verify("secret", 1700000000, body, signature, now=1700000000 - 301)  # or stamped in the future
    assert verify("secret", 1700000000, body, signature, tolerance_s=3600, now=1700000000 + 301)
