"""Standard MCP request headers (SEP-2243): Mcp-Method, Mcp-Name, Mcp-Param-*.

`encode_value`/`decode_value` implement the `=?base64?...?=` sentinel form; `check_modern_headers`
validates a modern request's headers against its body (400 + -32020 on mismatch);
`param_headers` computes Mcp-Param-* from a tool's `x-mcp-header` schema annotations.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from typing import Any

from stile.wire.eras import NAMED_METHODS
from stile.wire.errors import HeaderMismatch

_SAFE = re.compile(r"^[\x20-\x7e]*$")
_SENTINEL = re.compile(r"^=\?base64\?(.*)\?=$")
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


def encode_value(value: str) -> str:
    if _SAFE.match(value) and value == value.strip() and not _SENTINEL.match(value):
        return value
    return "=?base64?" + base64.b64encode(value.encode()).decode() + "?="


def decode_value(value: str) -> str:
    value = value.strip()
    m = _SENTINEL.match(value)
    if not m:
        return value
    try:
        return base64.b64decode(m.group(1), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise HeaderMismatch("header value has an invalid base64 encoding") from exc


def check_modern_headers(headers: Mapping[str, str], method: str, params: Mapping[str, Any]) -> None:
    """Raise HeaderMismatch if Mcp-Method / Mcp-Name are missing or disagree with the body."""
    got = headers.get("mcp-method")
    if got is None:
        raise HeaderMismatch("missing Mcp-Method header")
    if decode_value(got) != method:
        raise HeaderMismatch("Mcp-Method header does not match the request body")
    key = NAMED_METHODS.get(method)
    if key is not None:
        name = headers.get("mcp-name")
        if name is None:
            raise HeaderMismatch("missing Mcp-Name header")
        if decode_value(name) != params.get(key):
            raise HeaderMismatch("Mcp-Name header does not match the request body")


def header_params(tool: Mapping[str, Any]) -> dict[str, str]:
    """Map of header name -> argument name from a tool's `x-mcp-header` annotations (valid ones)."""
    schema = tool.get("inputSchema")
    if not isinstance(schema, dict):
        return {}
    props = schema.get("properties")
    if not isinstance(props, dict):
        return {}
    out: dict[str, str] = {}
    for arg, prop in props.items():
        if isinstance(prop, dict) and isinstance(prop.get("x-mcp-header"), str):
            name = prop["x-mcp-header"]
            if _TOKEN.match(name) and name.lower() not in {k.lower() for k in out}:
                out[name] = arg
    return out


def param_headers(mapping: Mapping[str, str], arguments: Mapping[str, Any]) -> dict[str, str]:
    """Compute Mcp-Param-<Name> headers for a call from the tool's header mapping."""
    out: dict[str, str] = {}
    for name, arg in mapping.items():
        value = arguments.get(arg)
        if value is None:
            continue
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, int | str):
            text = str(value)
        else:
            continue
        out["Mcp-Param-" + name] = encode_value(text)
    return out


_HEADER_VALUE = re.compile(r"^[\x20-\x7e\t]*$")
_DECIMAL = re.compile(r"[+-]?[0-9]+")  # int() alone would also take "1_000" and non-ASCII digits


def check_param_headers(headers: Mapping[str, str], mapping: Mapping[str, str], arguments: Mapping[str, Any]) -> None:
    """Reject a modern tools/call whose Mcp-Param-* headers disagree with its arguments (-32020)."""
    for name, arg in mapping.items():
        got = headers.get("mcp-param-" + name.lower())
        value = arguments.get(arg)
        if got is None:
            if value is not None and isinstance(value, bool | int | str):
                raise HeaderMismatch(f"missing Mcp-Param-{name} header")
            continue
        if not _HEADER_VALUE.match(got):
            raise HeaderMismatch(f"Mcp-Param-{name} header has invalid characters")
        text = decode_value(got)
        if value is None:
            raise HeaderMismatch(f"Mcp-Param-{name} header present but argument {arg!r} is absent")
        if isinstance(value, bool):
            ok = text == ("true" if value else "false")
        elif isinstance(value, int):
            ok = _DECIMAL.fullmatch(text) is not None and int(text) == value
        else:
            ok = text == str(value)
        if not ok:
            raise HeaderMismatch(f"Mcp-Param-{name} header does not match argument {arg!r}")
