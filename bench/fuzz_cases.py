"""Hypothesis strategies for front-door fuzz cases: one raw HTTP request (plus byte-level mutations) per case.

A `Case` is data (so hypothesis can shrink it): the HTTP method, a path, headers, a body (a JSON-RPC message
of either era, a batch, or raw bytes) and mutations applied to the encoded bytes. Placeholders `{SID25}`,
`{SID0326}` (sealed legacy session ids) and `{SSE}` (a live legacy SSE session) are filled in at send time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from hypothesis import strategies as st

from bench.fuzz_target import META, MODERN

TOOLS = ["notes__list_notes", "notes__get_note", "notes__add_note", "notes__count_slowly", "notes__delete_note"]
PROMPTS = ["notes__summarize", "summarize", ""]
URIS = ["notes://index", "notes://note/1", "notes://note/{note_id}", "file:///etc/passwd", "", "notes://"]
MCP_METHODS = ["initialize", "ping", "tools/list", "tools/call", "resources/list", "resources/read",
               "resources/templates/list", "resources/subscribe", "resources/unsubscribe", "prompts/list",
               "prompts/get", "completion/complete", "logging/setLevel", "server/discover", "subscriptions/listen",
               "tasks/get", "tasks/cancel", "notifications/cancelled", "notifications/initialized",
               "notifications/progress", "sampling/createMessage", "nope/nope", ""]
MAIN_PATHS = ["/mcp/open", "/mcp/keyed", "/mcp/open", "/sse/open/messages?session_id={SSE}", "/admin/audit",
              "/admin/usage"]
NOTIFICATIONS = ["notifications/cancelled", "notifications/cancelled", "notifications/initialized",
                 "notifications/progress", "notifications/roots/list_changed", "notifications/x"]
PATHS = ["/sse/open", "/sse/keyed", "/sse/open/messages", "/sse/keyed/messages?session_id={SSE}", "/admin/x",
         "/.well-known/oauth-protected-resource", "/.well-known/oauth-protected-resource/mcp/keyed",
         "/.well-known/oauth-protected-resource/mcp/nope", "/metrics", "/readyz", "/healthz", "/mcp/", "/mcp/nope",
         "/mcp/open/extra", "/sse/", "//mcp/open", "/mcp/open?x=1", "/mcp/%6fpen", "*", "/"]
ADMIN_QUERIES = ["limit", "since", "until", "agent", "user", "tool", "upstream", "outcome", "server", "by", "zz"]
ODD = ["", " ", "\t", '"', "\\", "x" * 300, "\xff\xfe", "é", "%00", "%C2%B2", "²", "٣", "[", "]", ":", "@",
       "0", "-1", "99999999999999999999", "1e400", "nan", "inf", "null", "true", "{}", "[]", "\x00", "\x7f",
       "a,b", "a\x01b", "\x85", "\u2028", "99999999999d", "1e400", "24h", "0.5s", "10000", "10001", "tool"]
TRACEPARENTS = ["00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "zz", "",
                "00-" + "0" * 32 + "-" + "0" * 16 + "-00"]
ODD_TEXT = st.one_of(st.sampled_from(ODD), st.text(max_size=24),
                     st.text(st.characters(min_codepoint=0, max_codepoint=255), max_size=24))
HEADERS: dict[str, list[str]] = {
    "Host": ["127.0.0.1", "localhost:1", "[::1]:80", "127.0.0.1:1\"x=\"y", "evil.example", "127.0.0.1:99999"],
    "Origin": ["http://127.0.0.1", "http://[", "https://evil.example", "null", "http://localhost:1", "http://[::1"],
    "Content-Type": ["application/json", "text/plain", "application/json; charset=latin-1", "multipart/x"],
    "Accept": ["application/json, text/event-stream", "text/event-stream", "application/json", "*/*"],
    "Mcp-Session-Id": ["{SID25}", "{SID0326}", "{SID25}x", "bogus"],
    "MCP-Protocol-Version": [MODERN, "2025-11-25", "2025-03-26", "2024-11-05", "1999-01-01"],
    "Mcp-Method": MCP_METHODS[:8],
    "Mcp-Name": [*TOOLS[:2], "=?base64?bm90ZXNfX2xpc3Rfbm90ZXM=?=", "=?base64?!!?="],
    "Authorization": ["Bearer {KEY}", "Bearer x.y.z", "Basic Zm9vOmJhcg==", "Bearer",
                      "Bearer eyJhbGciOiJub25lIn0.e30."],
    "X-API-Key": ["{KEY}", "stile_nope", "", "{KEY}{KEY}"],
    "Traceparent": TRACEPARENTS,
    "Tracestate": ["a=1", "x" * 600, "k=\xe9"],
    "Content-Length": ["0", "-1", "999999999", "1e3", " 5", "18446744073709551616"],
    "Transfer-Encoding": ["chunked", "gzip"],
    "Connection": ["close", "keep-alive", "upgrade"],
    "Last-Event-ID": ["1", "x" * 100],
}


_JSON: dict[int, st.SearchStrategy[Any]] = {}
_PARAMS: dict[str, st.SearchStrategy[Any]] = {}


def json_values(max_leaves: int = 8) -> st.SearchStrategy[Any]:
    """Any JSON value (odd strings and 70-bit integers included), built once per size."""
    if max_leaves not in _JSON:
        _JSON[max_leaves] = _json_values(max_leaves)
    return _JSON[max_leaves]


def _json_values(max_leaves: int) -> st.SearchStrategy[Any]:
    scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(min_value=-(2**70), max_value=2**70),
                        st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=16), st.sampled_from(ODD))
    return st.recursive(scalars, lambda kids: st.one_of(st.lists(kids, max_size=4),
                                                        st.dictionaries(st.text(max_size=8), kids, max_size=4)),
                        max_leaves=max_leaves)


def _maybe(value: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(value, json_values(4))


def _params(method: str) -> st.SearchStrategy[Any]:
    if method not in _PARAMS:
        _PARAMS[method] = _build_params(method)
    return _PARAMS[method]


def _build_params(method: str) -> st.SearchStrategy[Any]:
    ref = st.one_of(
        st.fixed_dictionaries({"type": st.just("ref/prompt"), "name": _maybe(st.sampled_from(PROMPTS))}),
        st.fixed_dictionaries({"type": st.just("ref/resource"), "uri": _maybe(st.sampled_from(URIS))}),
        json_values(4))
    shapes: dict[str, st.SearchStrategy[Any]] = {
        "tools/call": st.fixed_dictionaries({"name": _maybe(st.sampled_from(TOOLS)),
                                             "arguments": _maybe(st.dictionaries(
                                                 st.sampled_from(["note_id", "title", "text", "n", "x"]),
                                                 json_values(3), max_size=3))}),
        "resources/read": st.fixed_dictionaries({"uri": _maybe(st.sampled_from(URIS))}),
        "prompts/get": st.fixed_dictionaries({"name": _maybe(st.sampled_from(PROMPTS)),
                                              "arguments": json_values(3)}),
        "completion/complete": st.fixed_dictionaries({"ref": ref, "argument": _maybe(st.fixed_dictionaries(
            {"name": _maybe(st.just("style")), "value": _maybe(st.just("s"))}))}),
        "notifications/cancelled": st.fixed_dictionaries({"requestId": json_values(3), "reason": json_values(1)}),
        "initialize": st.fixed_dictionaries({"protocolVersion": _maybe(st.sampled_from(
            ["2025-11-25", "2025-03-26", "2024-11-05", MODERN])), "capabilities": json_values(3),
            "clientInfo": json_values(3)}),
        "tools/list": st.fixed_dictionaries({}, optional={"cursor": json_values(2)}),
        "logging/setLevel": st.fixed_dictionaries({"level": _maybe(st.sampled_from(["debug", "emergency"]))}),
        "resources/subscribe": st.fixed_dictionaries({"uri": _maybe(st.sampled_from(URIS))}),
        "subscriptions/listen": st.fixed_dictionaries({"notifications": json_values(3)}),
    }
    base = shapes.get(method, st.dictionaries(st.text(max_size=8), json_values(3), max_size=3))
    return st.one_of(base, base, base, json_values(3))


@st.composite
def messages(draw: st.DrawFn, modern: bool | None = None) -> Any:
    kind = draw(st.sampled_from(["request", "request", "request", "request", "notification", "response"]))
    notification = kind == "notification" and draw(st.integers(0, 3)) > 0
    method = draw(st.sampled_from(NOTIFICATIONS if notification else MCP_METHODS))
    params = draw(_params(method))
    if (modern if modern is not None else draw(st.booleans())) and isinstance(params, dict):
        params["_meta"] = draw(st.one_of(st.just(META), st.just(META), json_values(3), st.fixed_dictionaries(
            {**{k: st.just(v) for k, v in META.items()}, "traceparent": st.sampled_from(TRACEPARENTS),
             "tracestate": st.one_of(ODD_TEXT, st.just("a=1\r\nX-Evil: 1"), st.just("k=\u2603"))}),
                                         st.fixed_dictionaries({"io.modelcontextprotocol/protocolVersion":
                                                                _maybe(st.just(MODERN)),
                                                                "io.modelcontextprotocol/clientCapabilities":
                                                                json_values(2)})))
    msg: dict[str, Any] = {"jsonrpc": "2.0" if draw(st.integers(0, 9)) else draw(json_values(1))}
    if kind != "notification":
        msg["id"] = draw(st.one_of(st.integers(0, 100), st.integers(0, 100), st.text(max_size=6), json_values(2)))
    if kind == "response":
        msg[draw(st.sampled_from(["result", "error"]))] = draw(json_values(3))
    else:
        msg["method"] = method if draw(st.integers(0, 9)) else draw(json_values(2))
        if draw(st.integers(0, 9)):
            msg["params"] = params
    return msg


@dataclass
class Case:
    method: str
    path: str
    headers: list[tuple[str, str]]
    body: bytes
    mutations: list[tuple[str, int, bytes]] = field(default_factory=list)
    hang_up: bool = False

    def render(self, fill: dict[str, str]) -> bytes:
        path, headers = self.path, list(self.headers)
        for key, value in fill.items():
            path = path.replace(key, value)
            headers = [(k, v.replace(key, value)) for k, v in headers]
        body = self.body
        for key, value in fill.items():
            body = body.replace(key.encode(), value.encode())
        explicit_length = any(k.lower() in ("content-length", "transfer-encoding") for k, _ in headers)
        if not explicit_length:
            headers.append(("Content-Length", str(len(body))))
        head = f"{self.method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n"
        data = head.encode("latin-1", errors="replace") + body
        for op, pos, arg in self.mutations:
            data = _mutate(data, op, pos, arg)
        return data


def _mutate(data: bytes, op: str, pos: int, arg: bytes) -> bytes:
    i = pos % (len(data) + 1)
    if op == "truncate":
        return data[:i]
    if op == "insert":
        return data[:i] + arg + data[i:]
    if op == "flip":
        return data[:i] + bytes([data[i] ^ (arg[0] if arg else 0xFF)]) + data[i + 1:] if i < len(data) else data
    if op == "delete":
        return data[:i] + data[i + 1 + len(arg):]
    return data


def _body_bytes(draw: st.DrawFn, modern: bool) -> tuple[bytes, Any]:
    choice = draw(st.integers(0, 11))
    if choice <= 5:
        msg = draw(messages(modern))
        return json.dumps(msg, ensure_ascii=draw(st.booleans())).encode("utf-8", "surrogatepass"), msg
    return _odd_body(draw, choice), None


def _odd_body(draw: st.DrawFn, choice: int) -> bytes:
    if choice == 6:
        return json.dumps(draw(st.lists(messages(False), min_size=0, max_size=4))).encode("utf-8", "surrogatepass")
    if choice == 7:  # deep nesting
        depth = draw(st.integers(1, 5000))
        return b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":' + b"[" * depth + b"]" * depth + b"}"
    if choice == 8:  # duplicate keys, huge numbers
        return draw(st.sampled_from([b'{"jsonrpc":"2.0","id":1,"id":2,"method":"ping"}',
                                     b'{"jsonrpc":"2.0","id":1e999,"method":"ping"}',
                                     b'{"jsonrpc":"2.0","id":' + b"9" * 5000 + b',"method":"ping"}',
                                     b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"a":-0.0,"b":1E-400}}',
                                     b'{"jsonrpc":"2.0","id":1,"method":"\\ud800"}']))
    if choice == 9:  # bad UTF-8 inside a string
        return b'{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"cursor":"' + draw(
            st.binary(max_size=8)) + b'"}}'
    return draw(st.binary(max_size=64))


@st.composite
def cases(draw: st.DrawFn) -> Case:
    path = draw(st.sampled_from(MAIN_PATHS if draw(st.integers(0, 4)) else PATHS))
    if path.startswith("/admin/") and draw(st.integers(0, 4)):
        pairs = draw(st.lists(st.tuples(st.sampled_from(ADMIN_QUERIES), ODD_TEXT), max_size=3))
        path += "?" + "&".join(f"{k}={quote(v.encode('utf-8', 'surrogatepass'), safe='')}" for k, v in pairs)
    method = draw(st.sampled_from(["GET", "POST"] if path.startswith("/admin/") else ["POST"])
                  if draw(st.integers(0, 5)) else st.sampled_from(["POST", "GET", "DELETE", "PUT", "OPTIONS",
                                                                   "HEAD", "PATCH", "post", "X" * 20]))
    modern = draw(st.booleans())
    headers: list[tuple[str, str]] = [("Host", "127.0.0.1"), ("Content-Type", "application/json"),
                                      ("Accept", "application/json, text/event-stream")]
    body, msg = _body_bytes(draw, modern) if method != "GET" or draw(st.integers(0, 9)) == 0 else (b"", None)
    if modern:
        headers.append(("MCP-Protocol-Version", MODERN))
        _modern_headers(draw, headers, msg)
    elif path.startswith("/mcp") and draw(st.integers(0, 3)):
        headers.append(("Mcp-Session-Id", draw(st.sampled_from(["{SID25}", "{SID0326}"]))))
    if ("keyed" in path or path.startswith("/admin")) and draw(st.integers(0, 4)):  # else: the 401 challenge
        headers.append(draw(st.sampled_from([("X-API-Key", "{KEY}"), ("Authorization", "Bearer {KEY}"),
                                             ("X-API-Key", "{KEY}")])))
    if draw(st.integers(0, 9)) == 0:  # an odd Host (URLs and challenges are built from it)
        headers[0] = ("Host", draw(st.one_of(st.sampled_from(HEADERS["Host"]), ODD_TEXT)))
    odd = draw(st.integers(0, 2)) == 0
    for name in draw(st.lists(st.sampled_from(sorted(HEADERS)), max_size=3)) if odd else []:
        value = draw(st.one_of(st.sampled_from(HEADERS[name]), ODD_TEXT))
        if draw(st.booleans()):
            headers = [(k, v) for k, v in headers if k.lower() != name.lower()]
        headers.append((name, value.replace("\r", "").replace("\n", "")))
    muts = draw(st.lists(st.tuples(st.sampled_from(["truncate", "insert", "flip", "delete"]),
                                   st.integers(0, 4096), st.sampled_from([b"\xff", b"\x00", b"\r\n", b'"', b"\xc3",
                                                                          b"{", b"]", b"\r\n\r\n"])),
                         max_size=2)) if draw(st.integers(0, 6)) == 0 else []
    return Case(method, path, headers, body, muts, hang_up=draw(st.integers(0, 19)) == 0)


def _modern_headers(draw: st.DrawFn, headers: list[tuple[str, str]], msg: Any) -> None:
    """Mcp-Method / Mcp-Name mostly agreeing with the body (so cases get past the header check)."""
    method = msg.get("method") if isinstance(msg, dict) else None
    if isinstance(method, str) and draw(st.integers(0, 5)):
        headers.append(("Mcp-Method", method.encode("utf-8", "replace").decode("latin-1")))
        params = msg.get("params")
        name = params.get("name", params.get("uri")) if isinstance(params, dict) else None
        if isinstance(name, str):
            headers.append(("Mcp-Name", name.encode("utf-8", "replace").decode("latin-1")))
    else:
        headers.append(("Mcp-Method", draw(st.sampled_from(MCP_METHODS))))
