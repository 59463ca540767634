"""JSON-RPC 2.0 messages as plain dicts: strict inbound parsing and fast encoding.

Inbound client bodies are parsed once with the stdlib scanner so duplicate keys can be
refused (an ambiguity attackers use against parser pairs); nesting depth is bounded.
Upstream bodies are parsed with orjson (trusted to be well formed, and often large).
Messages stay raw dicts: unknown fields and `_meta` pass through untouched.
"""

from __future__ import annotations

import json
import math
from typing import Any

import orjson

from stile.wire.errors import InvalidRequest, ParseError

Message = dict[str, Any]
MAX_DEPTH = 64


class _DuplicateKey(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return obj


def _depth_ok(value: Any, limit: int) -> bool:
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return False
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values() if isinstance(v, dict | list))
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item if isinstance(v, dict | list))
    return True


# orjson (the encoder on every outbound leg) carries only these integers, finite floats and valid
# Unicode; refuse anything else at the door instead of failing later while re-encoding it.
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1


class _NotPortable(ValueError):
    pass


def _parse_int(text: str) -> int:
    value = int(text)
    if not _INT_MIN <= value <= _INT_MAX:
        raise _NotPortable("integer outside the 64-bit range")
    return value


def _parse_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise _NotPortable("number out of range")
    return value


def _parse_constant(name: str) -> Any:
    raise _NotPortable(f"{name} is not JSON")


_DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicates, parse_int=_parse_int, parse_float=_parse_float,
                            parse_constant=_parse_constant)


def parse_body(body: bytes, *, max_depth: int = MAX_DEPTH) -> Any:
    """Parse a client body into JSON; raise ParseError with a safe message on any defect."""
    try:
        text = body.decode("utf-8")  # strict: JSON over HTTP is UTF-8 (no UTF-16/32 sniffing, no BOM)
        value = _DECODER.decode(text)  # what json.loads(text, **hooks) runs, without a new decoder per call
        if "\\u" in text:
            orjson.loads(body)  # \uD800-style escapes can smuggle lone surrogates, which no encoder accepts
    except _DuplicateKey as exc:
        raise ParseError(f"duplicate key {str(exc)[:64]!r} in JSON object") from exc
    except _NotPortable as exc:
        raise ParseError(f"invalid JSON: {exc}") from exc
    except RecursionError as exc:
        raise ParseError("JSON nested too deeply") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise ParseError("invalid JSON") from exc
    # Depth can only exceed the limit if there are more opening brackets than the limit (C-speed count).
    if body.count(b"{") + body.count(b"[") > max_depth and not _depth_ok(value, max_depth):
        raise ParseError(f"JSON nested deeper than {max_depth} levels")
    return value


def validate_message(value: Any) -> Message:
    """Check the JSON-RPC 2.0 envelope of one message (request, notification or response)."""
    if not isinstance(value, dict):
        raise InvalidRequest("expected one JSON-RPC message object")
    if value.get("jsonrpc") != "2.0":
        raise InvalidRequest('"jsonrpc" must be "2.0"')
    if "method" in value:
        if not isinstance(value["method"], str) or not value["method"]:
            raise InvalidRequest('"method" must be a non-empty string')
        if "id" in value and not is_valid_id(value["id"]):
            raise InvalidRequest('"id" must be a string or an integer')
        params = value.get("params")
        if params is not None and not isinstance(params, dict):
            raise InvalidRequest('"params" must be an object')
        return value
    if "id" in value and ("result" in value or "error" in value):
        return value
    raise InvalidRequest("message is neither a request, a notification nor a response")


def is_valid_id(value: Any) -> bool:
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


def is_request(msg: Message) -> bool:
    return "method" in msg and "id" in msg


def is_notification(msg: Message) -> bool:
    return "method" in msg and "id" not in msg


def is_response(msg: Message) -> bool:
    return "method" not in msg and ("result" in msg or "error" in msg)


def loads(data: bytes | str) -> Any:
    return orjson.loads(data)


def dumps(msg: Any) -> bytes:
    return orjson.dumps(msg)


def result(id_: Any, value: Any) -> Message:
    return {"jsonrpc": "2.0", "id": id_, "result": value}


def error(id_: Any, code: int, message: str, data: Any = None) -> Message:
    err: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        err["data"] = data
    return {"jsonrpc": "2.0", "id": id_, "error": err}


def request(id_: Any, method: str, params: dict[str, Any] | None = None) -> Message:
    msg: Message = {"jsonrpc": "2.0", "id": id_, "method": method}
    if params is not None:
        msg["params"] = params
    return msg


def notification(method: str, params: dict[str, Any] | None = None) -> Message:
    msg: Message = {"jsonrpc": "2.0", "method": method}
    if params is not None:
        msg["params"] = params
    return msg
