"""runtime.batch.json_lines: json.loads's verdicts at msgspec's speed, and output rows as valid JSON."""

from __future__ import annotations

import json
import math

import pytest

from runtime.batch import json_lines

# What json.loads accepts and msgspec refuses (the fallback must take each), beside plain lines.
ACCEPTED = [
    b'{"custom_id": "a", "body": {"model": "m", "n": 1, "x": 1.5e-3, "t": true, "z": null}}',
    b'{"a": NaN, "b": Infinity, "c": -Infinity}',  # not JSON, but json.loads takes it and so did intake
    b'{"a": "\\ud800"}',  # a lone surrogate escape
    b'{"seed": ' + b"9" * 4000 + b"}",  # past msgspec's integer range, within json.loads's 4,300 digits
    b'{"a": 1e400}',  # a float out of range: json.loads gives inf
    b"[" * 900 + b"]" * 900,  # deeper than msgspec goes
    b' \t{"a": "\\u00e9", "a": 2}\r',  # JSON whitespace; the last of two equal keys wins
    '{"é": "ü"}'.encode(),
    b"\xef\xbb\xbf{}",  # json.loads skips a UTF-8 BOM in bytes (intake decodes first, and refuses it)
]
REFUSED = [b'{"a": 1,}', b"{'a': 1}", b'{"a": "\xff"}', b'"a\x01b"', b'{"a":1}{"b":2}', b"01"]


@pytest.mark.parametrize("data", ACCEPTED, ids=lambda d: repr(d[:30]))
def test_loads_gives_what_json_loads_gives(data: bytes) -> None:
    expected, got = json.loads(data), json_lines.loads(data)
    assert repr(got) == repr(expected)  # repr: NaN != NaN, and 1 == 1.0 == True would hide a type change


@pytest.mark.parametrize("data", REFUSED, ids=repr)
def test_loads_refuses_what_json_loads_refuses_with_its_error(data: bytes) -> None:
    with pytest.raises(ValueError) as stdlib:
        json.loads(data)
    with pytest.raises(ValueError) as ours:
        json_lines.loads(data)
    assert type(ours.value) is type(stdlib.value) and str(ours.value) == str(stdlib.value)


def test_loads_fast_refuses_what_only_the_stdlib_takes() -> None:
    """The fast path is a subset: without it the fallback above would be untested."""
    assert json_lines.loads_fast(ACCEPTED[1]) is json_lines.UNPARSED
    assert json_lines.loads_fast(ACCEPTED[0]) == json.loads(ACCEPTED[0])


def test_dumps_writes_valid_json_even_for_nan() -> None:
    row = {"custom_id": "é", "body": {"score": math.nan, "n": 2**70}}
    assert json.loads(json_lines.dumps(row)) == {"custom_id": "é", "body": {"score": None, "n": 2**70}}


def test_a_row_msgspec_cannot_encode_is_written_by_json_dumps_not_dropped() -> None:
    """An engine body may hold what msgspec refuses; the row must still be written (as json.dumps did)."""

    class Score(float):  # a float subclass, as numpy.float64 is
        pass

    for row in ({"content": "ab\ud83d"}, {"score": Score(0.5)}, {"body": {True: 1, None: 2}}):
        assert json_lines.dumps(row) == json.dumps(row).encode()


def test_loads_takes_a_str_holding_a_lone_surrogate_as_json_loads_does() -> None:
    assert json_lines.loads('{"a": "\ud800"}') == json.loads('{"a": "\ud800"}')
