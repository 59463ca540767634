"""`parse_body` reuses one JSON decoder: it accepts and refuses exactly what `json.loads` with the same hooks did."""

from __future__ import annotations

import json
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from stile.wire import jsonrpc
from stile.wire.errors import ParseError


def reference(body: bytes, max_depth: int = jsonrpc.MAX_DEPTH) -> Any:
    """The parser before the decoder was shared (json.loads builds a decoder per call)."""
    try:
        text = body.decode("utf-8")
        value = json.loads(text, object_pairs_hook=jsonrpc._no_duplicates, parse_int=jsonrpc._parse_int,
                           parse_float=jsonrpc._parse_float, parse_constant=jsonrpc._parse_constant)
        if "\\u" in text:
            orjson.loads(body)
    except (jsonrpc._DuplicateKey, jsonrpc._NotPortable, RecursionError, ValueError, UnicodeDecodeError):
        return "refused"
    if body.count(b"{") + body.count(b"[") > max_depth and not jsonrpc._depth_ok(value, max_depth):
        return "refused"
    return value


def current(body: bytes) -> Any:
    try:
        return jsonrpc.parse_body(body)
    except ParseError:
        return "refused"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4),
    max_leaves=20)
fragments = st.sampled_from([b"{", b"}", b"[", b"]", b'"a"', b":", b",", b"1e999", b"NaN", b"-Infinity",
                             b'"\\ud800"', b"\xef\xbb\xbf", b"\xff", b"18446744073709551616", b"true", b" ",
                             b'{"a":1,"a":2}', b"0.5", b"-0"])


@settings(max_examples=400, deadline=None)
@given(value=json_values)
def test_encoded_values_parse_alike(value: Any) -> None:
    body = json.dumps(value).encode()
    assert current(body) == reference(body)


@settings(max_examples=400, deadline=None)
@given(parts=st.lists(fragments, max_size=12))
def test_odd_bytes_are_accepted_or_refused_alike(parts: list[bytes]) -> None:
    body = b"".join(parts)
    assert current(body) == reference(body)
