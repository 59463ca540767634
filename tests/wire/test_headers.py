"""Standard MCP request headers (SEP-2243): value encoding, body/header agreement, Mcp-Param-* mapping."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stile.wire.errors import HEADER_MISMATCH, HeaderMismatch
from stile.wire.headers import (
    check_modern_headers,
    check_param_headers,
    decode_value,
    encode_value,
    header_params,
    param_headers,
)


def tool(**props: dict[str, Any]) -> dict[str, Any]:
    return {"name": "t", "inputSchema": {"type": "object", "properties": props}}


# --- value encoding ----------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["tools/call", "get_weather", "a b c", "x=1; y=2", "~!@#$%^&*()"])
def test_header_safe_values_are_sent_as_they_are(value: str) -> None:
    assert encode_value(value) == value
    assert decode_value(value) == value


@pytest.mark.parametrize("value", ["caf\u00e9", "line\nbreak", " leading", "trailing ", "tab\there", "\u2603", ""])
def test_values_that_are_not_header_safe_use_the_base64_sentinel(value: str) -> None:
    if value == "":
        assert encode_value(value) == ""
        return
    encoded = encode_value(value)
    assert encoded.startswith("=?base64?") and encoded.endswith("?=")
    assert decode_value(encoded) == value


def test_a_plain_value_that_looks_like_the_sentinel_is_encoded_too() -> None:
    tricky = "=?base64?aGk=?="
    encoded = encode_value(tricky)
    assert encoded != tricky
    assert decode_value(encoded) == tricky


def test_decode_trims_optional_whitespace_around_the_value() -> None:
    assert decode_value("  tools/list\t") == "tools/list"
    assert decode_value(" =?base64?aGk=?= ") == "hi"


@pytest.mark.parametrize("bad", ["=?base64?!!!?=", "=?base64?aGk?=", "=?base64?//79?="])
def test_a_sentinel_with_broken_base64_or_utf8_is_a_header_mismatch(bad: str) -> None:
    with pytest.raises(HeaderMismatch) as info:
        decode_value(bad)
    assert info.value.jsonrpc_code == HEADER_MISMATCH
    assert info.value.http_status == 400


@settings(max_examples=500, deadline=None)
@given(st.text(st.characters(blacklist_categories=["Cs"])))
def test_every_text_survives_encode_then_decode(value: str) -> None:
    encoded = encode_value(value)
    assert all(0x20 <= ord(c) <= 0x7E for c in encoded)
    assert decode_value(encoded) == value


# --- Mcp-Method / Mcp-Name -----------------------------------------------------------------------------


def test_matching_method_and_name_headers_pass() -> None:
    check_modern_headers({"mcp-method": "tools/call", "mcp-name": "notes__add"}, "tools/call", {"name": "notes__add"})
    check_modern_headers({"mcp-method": "resources/read", "mcp-name": "a+b://c"}, "resources/read", {"uri": "a+b://c"})
    check_modern_headers({"mcp-method": "tools/list"}, "tools/list", {})


def test_an_encoded_name_header_is_decoded_before_comparing() -> None:
    name = "caf\u00e9"
    check_modern_headers({"mcp-method": "prompts/get", "mcp-name": encode_value(name)}, "prompts/get", {"name": name})


@pytest.mark.parametrize(
    ("headers", "method", "params", "why"),
    [
        ({}, "tools/list", {}, "missing Mcp-Method"),
        ({"mcp-method": "tools/list"}, "tools/call", {"name": "x"}, "Mcp-Method header does not match"),
        ({"mcp-method": "tools/call"}, "tools/call", {"name": "x"}, "missing Mcp-Name"),
        ({"mcp-method": "tools/call", "mcp-name": "y"}, "tools/call", {"name": "x"}, "Mcp-Name header does not match"),
        ({"mcp-method": "resources/read", "mcp-name": "x"}, "resources/read", {"name": "x", "uri": "u://1"},
         "Mcp-Name header does not match"),
        ({"mcp-method": "TOOLS/CALL", "mcp-name": "x"}, "tools/call", {"name": "x"}, "Mcp-Method header does not"),
    ],
)
def test_missing_or_disagreeing_standard_headers_raise_header_mismatch(
    headers: dict[str, str], method: str, params: dict[str, Any], why: str
) -> None:
    with pytest.raises(HeaderMismatch, match=why):
        check_modern_headers(headers, method, params)


# --- x-mcp-header -> Mcp-Param-* ------------------------------------------------------------------------


def test_header_params_maps_header_names_to_argument_names() -> None:
    t = tool(region={"type": "string", "x-mcp-header": "Region"}, count={"type": "integer", "x-mcp-header": "Count"},
             plain={"type": "string"})
    assert header_params(t) == {"Region": "region", "Count": "count"}


def test_header_params_ignores_invalid_and_case_insensitively_duplicate_header_names() -> None:
    t = tool(a={"x-mcp-header": "Good"}, b={"x-mcp-header": "has space"}, c={"x-mcp-header": ""},
             d={"x-mcp-header": "GOOD"}, e={"x-mcp-header": "bad\r\nx"}, f={"x-mcp-header": 7})
    assert header_params(t) == {"Good": "a"}


@pytest.mark.parametrize("t", [{}, {"inputSchema": "x"}, {"inputSchema": {"properties": []}}])
def test_header_params_of_a_tool_without_usable_schema_is_empty(t: dict[str, Any]) -> None:
    assert header_params(t) == {}


def test_param_headers_render_strings_integers_and_booleans_and_omit_the_rest() -> None:
    mapping = {"S": "s", "I": "i", "B": "b", "N": "n", "F": "f", "O": "o", "U": "u"}
    args = {"s": "caf\u00e9", "i": -42, "b": False, "n": None, "f": 1.5, "o": {"x": 1}}
    assert param_headers(mapping, args) == {
        "Mcp-Param-S": encode_value("caf\u00e9"), "Mcp-Param-I": "-42", "Mcp-Param-B": "false",
    }


def test_param_headers_computed_for_a_call_pass_the_servers_check() -> None:
    mapping = {"Region": "region", "Limit": "limit", "Dry": "dry"}
    args = {"region": " eu west ", "limit": 10, "dry": True}
    sent = {k.lower(): v for k, v in param_headers(mapping, args).items()}
    check_param_headers(sent, mapping, args)


@pytest.mark.parametrize(
    ("headers", "args", "why"),
    [
        ({}, {"region": "eu"}, "missing Mcp-Param-Region"),
        ({"mcp-param-region": "us"}, {"region": "eu"}, "does not match argument 'region'"),
        ({"mcp-param-region": "eu"}, {}, "present but argument 'region' is absent"),
        ({"mcp-param-region": "e\x01u"}, {"region": "e\x01u"}, "invalid characters"),
    ],
)
def test_check_param_headers_rejects_missing_mismatched_and_invalid_headers(
    headers: dict[str, str], args: dict[str, Any], why: str
) -> None:
    with pytest.raises(HeaderMismatch, match=why):
        check_param_headers(headers, {"Region": "region"}, args)


def test_integer_param_headers_compare_numerically() -> None:
    check_param_headers({"mcp-param-n": "007"}, {"N": "n"}, {"n": 7})
    with pytest.raises(HeaderMismatch):
        check_param_headers({"mcp-param-n": "7.0"}, {"N": "n"}, {"n": 7})
    with pytest.raises(HeaderMismatch):
        check_param_headers({"mcp-param-n": "8"}, {"N": "n"}, {"n": 7})


@pytest.mark.parametrize("written", ["1_000", encode_value("\u0661\u0660\u0660\u0660"), encode_value("1000\n")])
def test_integer_param_headers_accept_only_ascii_decimal_digits(written: str) -> None:
    # Python's int() also reads "1_000" and Arabic-Indic digits as 1000; a header is not Python syntax.
    with pytest.raises(HeaderMismatch):
        check_param_headers({"mcp-param-n": written}, {"N": "n"}, {"n": 1000})


def test_boolean_param_headers_must_be_lowercase_true_or_false() -> None:
    check_param_headers({"mcp-param-b": "true"}, {"B": "b"}, {"b": True})
    for bad in ("True", "1", "yes"):
        with pytest.raises(HeaderMismatch):
            check_param_headers({"mcp-param-b": bad}, {"B": "b"}, {"b": True})


def test_a_non_primitive_argument_without_header_is_not_required_to_have_one() -> None:
    check_param_headers({}, {"O": "o"}, {"o": {"nested": 1}})
    check_param_headers({}, {"O": "o"}, {"o": None})
