"""What the http engine puts in headers: HTTP carries ASCII only, custom_ids may be any Unicode."""

from __future__ import annotations

import httpx

from runtime.batch.engines.http import session_header


def test_a_printable_ascii_custom_id_is_its_own_session_key() -> None:
    """Unchanged: the load balancer keeps sending a session where it sent it before this encoding."""
    assert session_header("candidate-17 /a?b=c") == "candidate-17 /a?b=c"


def test_any_other_custom_id_becomes_a_header_httpx_accepts_and_stays_distinct() -> None:
    ids = ["café", "候補-2", "tab\tand\nnewline", "\ud800", "café-ü"]
    values = [session_header(i) for i in ids]
    assert all(v.isascii() and v.isprintable() for v in values)
    assert len(set(values)) == len(ids) and values == [session_header(i) for i in ids]  # distinct, stable
    httpx.Request("POST", "http://lb/v1/chat/completions", headers={"X-Session-ID": values[1]})  # no raise
