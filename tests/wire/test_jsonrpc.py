"""JSON-RPC parsing and envelope validation (sans-I/O): strict, bounded, and never surprised by bytes."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stile.wire import jsonrpc
from stile.wire.errors import (
    INVALID_REQUEST,
    PARSE_ERROR,
    ClientError,
    InvalidRequest,
    ParseError,
)

# JSON values orjson can carry (64-bit integers, finite floats, valid Unicode).
json_scalars = (
    st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text()
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5),
    max_leaves=30,
)


def nested(depth: int) -> bytes:
    return b'{"a":' * (depth - 1) + b"{}" + b"}" * (depth - 1)


# --- parse_body -------------------------------------------------------------------------------------


def test_parse_body_returns_the_json_value_of_a_well_formed_request() -> None:
    body = b'{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"x","arguments":{"k":[1,2.5,null]}}}'
    assert jsonrpc.parse_body(body) == {
        "jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "x", "arguments": {"k": [1, 2.5, None]}},
    }


def test_parse_body_refuses_a_duplicate_key_and_names_it() -> None:
    with pytest.raises(ParseError, match="duplicate key 'method'"):
        jsonrpc.parse_body(b'{"jsonrpc":"2.0","id":1,"method":"tools/list","method":"tools/call"}')


def test_parse_body_refuses_a_duplicate_key_in_a_nested_object() -> None:
    with pytest.raises(ParseError, match="duplicate key 'name'"):
        jsonrpc.parse_body(b'{"params":{"arguments":{"name":"a","name":"b"}}}')


def test_parse_body_accepts_nesting_up_to_the_limit_and_refuses_one_level_more() -> None:
    assert jsonrpc.parse_body(nested(64), max_depth=64) is not None
    with pytest.raises(ParseError, match="deeper than 64"):
        jsonrpc.parse_body(nested(65), max_depth=64)


def test_parse_body_refuses_extreme_nesting_without_a_recursion_error() -> None:
    with pytest.raises(ParseError):
        jsonrpc.parse_body(b"[" * 200_000 + b"]" * 200_000)


@pytest.mark.parametrize("body", [b"", b"{", b"not json", b'{"a":1,}', b"\xff\xfe{}", b'{"a":"\x00"}'])
def test_parse_body_raises_parse_error_with_code_minus_32700_for_malformed_json(body: bytes) -> None:
    with pytest.raises(ParseError) as info:
        jsonrpc.parse_body(body)
    assert info.value.jsonrpc_code == PARSE_ERROR
    assert info.value.http_status == 400


@pytest.mark.parametrize("body", [b"NaN", b'{"x": Infinity}', b"[-Infinity]", b"1e400"])
def test_parse_body_refuses_non_finite_numbers_which_json_does_not_define(body: bytes) -> None:
    with pytest.raises(ParseError):
        jsonrpc.parse_body(body)


@pytest.mark.parametrize("body", [b'"\\ud800"', b'{"k":"a\\udfffb"}', b'["\\ud83d"]'])
def test_parse_body_refuses_lone_surrogate_escapes_that_cannot_be_re_encoded(body: bytes) -> None:
    with pytest.raises(ParseError):
        jsonrpc.parse_body(body)


def test_parse_body_accepts_a_valid_surrogate_pair_escape() -> None:
    assert jsonrpc.parse_body(b'"\\ud83d\\ude00"') == "\U0001f600"


@pytest.mark.parametrize("body", [b"18446744073709551616", b'{"id":-9223372036854775809}'])
def test_parse_body_refuses_integers_outside_the_64_bit_range(body: bytes) -> None:
    with pytest.raises(ParseError):
        jsonrpc.parse_body(body)


def test_parse_body_refuses_a_utf16_body_because_json_over_http_is_utf8() -> None:
    with pytest.raises(ParseError):
        jsonrpc.parse_body('{"a":1}'.encode("utf-16"))


def test_parse_error_message_does_not_echo_the_body() -> None:
    secret = b"sk-live-very-secret-token"
    with pytest.raises(ParseError) as info:
        jsonrpc.parse_body(b'{"token":"' + secret + b'"')
    assert secret.decode() not in info.value.message


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=256))
def test_parse_and_validate_raise_only_parse_error_or_invalid_request_on_arbitrary_bytes(body: bytes) -> None:
    with contextlib.suppress(ParseError, InvalidRequest):
        jsonrpc.validate_message(jsonrpc.parse_body(body))


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet='{}[]":,0123456789.eE+-tfnrul\\ adbcx', max_size=80))
def test_parse_body_raises_only_parse_error_on_json_like_text(text: str) -> None:
    with contextlib.suppress(ParseError):
        jsonrpc.parse_body(text.encode())


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_parse_body_round_trips_every_encodable_json_value(value: Any) -> None:
    assert jsonrpc.parse_body(jsonrpc.dumps(value), max_depth=1000) == value


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_whatever_parse_body_accepts_can_be_re_encoded_by_dumps(body: bytes) -> None:
    try:
        value = jsonrpc.parse_body(body)
    except ParseError:
        return
    assert jsonrpc.loads(jsonrpc.dumps(value)) == value


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet='"\\ud83Dd8Fe0', max_size=40))
def test_whatever_parse_body_accepts_of_escape_heavy_strings_can_be_re_encoded(text: str) -> None:
    try:
        value = jsonrpc.parse_body(b'"' + text.encode() + b'"')
    except ParseError:
        return
    jsonrpc.dumps(value)


# --- validate_message --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "msg",
    [
        {"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
        {"jsonrpc": "2.0", "id": "abc", "method": "tools/list", "params": {}},
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": 3, "result": {}},
        {"jsonrpc": "2.0", "id": 3, "error": {"code": -1, "message": "x"}},
    ],
)
def test_validate_message_accepts_requests_notifications_and_responses(msg: dict[str, Any]) -> None:
    assert jsonrpc.validate_message(msg) is msg


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ([{"jsonrpc": "2.0", "id": 1, "method": "ping"}], "one JSON-RPC message object"),
        ("tools/list", "one JSON-RPC message object"),
        ({"id": 1, "method": "ping"}, '"jsonrpc" must be "2.0"'),
        ({"jsonrpc": "1.0", "id": 1, "method": "ping"}, '"jsonrpc" must be "2.0"'),
        ({"jsonrpc": "2.0", "id": 1, "method": ""}, '"method" must be a non-empty string'),
        ({"jsonrpc": "2.0", "id": 1, "method": 5}, '"method" must be a non-empty string'),
        ({"jsonrpc": "2.0", "id": None, "method": "ping"}, '"id" must be a string or an integer'),
        ({"jsonrpc": "2.0", "id": 1.5, "method": "ping"}, '"id" must be a string or an integer'),
        ({"jsonrpc": "2.0", "id": True, "method": "ping"}, '"id" must be a string or an integer'),
        ({"jsonrpc": "2.0", "id": 1, "method": "ping", "params": [1]}, '"params" must be an object'),
        ({"jsonrpc": "2.0", "id": 1}, "neither a request"),
        ({"jsonrpc": "2.0", "result": {}}, "neither a request"),
    ],
)
def test_validate_message_refuses_a_malformed_envelope_with_invalid_request(value: Any, why: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        jsonrpc.validate_message(value)
    assert why in info.value.message
    assert info.value.jsonrpc_code == INVALID_REQUEST


def test_parse_error_and_invalid_request_are_client_errors_answered_with_http_400() -> None:
    for exc in (ParseError("x"), InvalidRequest("y")):
        assert isinstance(exc, ClientError)
        assert exc.http_status == 400


# --- classification and construction ------------------------------------------------------------------


def test_classifiers_tell_requests_notifications_and_responses_apart() -> None:
    req = jsonrpc.request(1, "tools/list")
    note = jsonrpc.notification("notifications/initialized")
    res = jsonrpc.result(1, {})
    err = jsonrpc.error(1, -32601, "nope")
    assert [jsonrpc.is_request(m) for m in (req, note, res, err)] == [True, False, False, False]
    assert [jsonrpc.is_notification(m) for m in (req, note, res, err)] == [False, True, False, False]
    assert [jsonrpc.is_response(m) for m in (req, note, res, err)] == [False, False, True, True]


def test_builders_produce_the_exact_json_rpc_shapes() -> None:
    assert jsonrpc.request("a", "m", {"p": 1}) == {"jsonrpc": "2.0", "id": "a", "method": "m", "params": {"p": 1}}
    assert jsonrpc.request(1, "m") == {"jsonrpc": "2.0", "id": 1, "method": "m"}
    assert jsonrpc.notification("n") == {"jsonrpc": "2.0", "method": "n"}
    assert jsonrpc.error(2, -32602, "bad", {"d": 1}) == {
        "jsonrpc": "2.0", "id": 2, "error": {"code": -32602, "message": "bad", "data": {"d": 1}},
    }
    assert "data" not in jsonrpc.error(2, -32602, "bad")["error"]


def test_dumps_and_loads_preserve_unknown_fields_and_meta() -> None:
    msg = {"jsonrpc": "2.0", "id": 1, "method": "x/y", "params": {"_meta": {"vendor/k": [1]}, "future": {"a": 1}},
           "extension": True}
    assert jsonrpc.loads(jsonrpc.dumps(msg)) == msg
    assert json.loads(jsonrpc.dumps(msg)) == msg
