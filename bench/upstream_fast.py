"""A minimal, very fast dual-era MCP upstream for benchmarks.

Raw asyncio protocol + httptools request parser + orjson, on uvloop when installed. Measured against
a uvicorn raw-ASGI app of the same logic (see bench/README.md): this is several times cheaper per
request, which matters because the upstream shares a core with the load generator.

One endpoint, ``POST /mcp``, serves both protocol eras:

* legacy (2025-11-25): ``initialize`` mints an ``Mcp-Session-Id``; later requests must carry it
  (missing => 400, unknown => 404); ``notifications/*`` => 202; ``DELETE /mcp`` ends the session.
* modern (2026-07-28): any request whose ``params._meta`` carries
  ``io.modelcontextprotocol/protocolVersion`` is served statelessly; ``server/discover`` returns
  ``supportedVersions: ["2026-07-28"]``; every result carries ``resultType: "complete"``; header
  ``MCP-Protocol-Version`` / ``Mcp-Method`` / ``Mcp-Name`` are checked when present (and required with
  ``--strict-headers``).

Tools: ``echo`` (returns ``arguments.text``), ``big`` (~100 KB text), ``slow_progress`` (when the
request has a ``progressToken``: an SSE response with ``steps`` ``notifications/progress`` events,
``delay_ms`` apart, then the result), plus filler tools up to ``--tools N`` (calls behave like echo).

``GET /healthz`` => 200. Prints ``READY <port>`` on stdout once listening.

    python -m bench.upstream_fast --port 0 --tools 100
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import secrets
import signal
import sys
from typing import Any

import httptools
import orjson

MODERN = "2026-07-28"
LEGACY_DEFAULT = "2025-11-25"
LEGACY_VERSIONS = frozenset({"2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05"})
META_VERSION = "io.modelcontextprotocol/protocolVersion"
BIG_SIZE = 100 * 1024

_REASONS = {200: b"OK", 202: b"Accepted", 400: b"Bad Request", 404: b"Not Found", 405: b"Method Not Allowed"}


def _tool_defs(n_tools: int) -> list[dict[str, Any]]:
    real = [
        {
            "name": "echo",
            "description": "Echo the given text back.",
            "inputSchema": {
                "type": "object",
                "properties": {"text": {"type": "string", "description": "text to echo"}},
                "required": ["text"],
            },
        },
        {
            "name": "big",
            "description": "Return a ~100 KB text block.",
            "inputSchema": {"type": "object", "additionalProperties": False},
        },
        {
            "name": "slow_progress",
            "description": "Send `steps` progress notifications `delay_ms` apart, then a result.",
            "inputSchema": {
                "type": "object",
                "properties": {
                    "steps": {"type": "integer", "minimum": 0, "maximum": 1000},
                    "delay_ms": {"type": "integer", "minimum": 0, "maximum": 10000},
                },
            },
        },
    ]
    tools = real[: max(n_tools, 0)]
    for i in range(len(tools), n_tools):
        tools.append(
            {
                "name": f"tool_{i:03d}",
                "title": f"Synthetic tool {i}",
                "description": (
                    f"Synthetic tool number {i} for list benchmarks. Looks up records matching a query "
                    "and returns at most `limit` of them as text."
                ),
                "inputSchema": {
                    "type": "object",
                    "properties": {
                        "query": {"type": "string", "description": "what to look for"},
                        "limit": {"type": "integer", "minimum": 1, "maximum": 100, "default": 10},
                    },
                    "required": ["query"],
                },
                "annotations": {"readOnlyHint": True, "openWorldHint": False},
            }
        )
    return tools


def _big_text() -> str:
    line = "The quick brown fox jumps over the lazy dog. 0123456789 abcdefghijklmnopqrstuvwxyz\n"
    return (line * (BIG_SIZE // len(line) + 1))[:BIG_SIZE]


class App:
    """Request handling, independent of the socket layer (the uvicorn variant reuses it)."""

    def __init__(self, n_tools: int, strict_headers: bool = False, sse: bool = False) -> None:
        self.strict_headers = strict_headers
        self.always_sse = sse
        self.sessions: set[bytes] = set()
        self.requests = 0
        tools = _tool_defs(n_tools)
        self.tool_names = frozenset(t["name"] for t in tools)
        self.list_legacy = orjson.dumps({"tools": tools})
        self.list_modern = orjson.dumps({"tools": tools, "resultType": "complete", "ttlMs": 0, "cacheScope": "public"})
        big = {"content": [{"type": "text", "text": _big_text()}], "isError": False}
        self.big_legacy = orjson.dumps(big)
        self.big_modern = orjson.dumps({**big, "resultType": "complete"})
        self.server_info = {"name": "stile-bench-fast", "version": "1.0.0"}
        self.discover = orjson.dumps(
            {
                "resultType": "complete",
                "supportedVersions": [MODERN],
                "capabilities": {"tools": {"listChanged": False}},
                "ttlMs": 0,
                "cacheScope": "public",
                "_meta": {"io.modelcontextprotocol/serverInfo": self.server_info},
            }
        )

    # -- helpers returning (status, extra_headers, body, sse_events|None) ---------------------------
    @staticmethod
    def _ok(msg_id: Any, result: bytes) -> bytes:
        return b'{"jsonrpc":"2.0","id":' + orjson.dumps(msg_id) + b',"result":' + result + b"}"

    @staticmethod
    def _err(msg_id: Any, code: int, message: str, data: Any = None) -> bytes:
        err: dict[str, Any] = {"code": code, "message": message}
        if data is not None:
            err["data"] = data
        return orjson.dumps({"jsonrpc": "2.0", "id": msg_id, "error": err})

    def handle(
        self, method_verb: bytes, headers: dict[bytes, bytes], body: bytes
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes, list[bytes] | None, float]:
        """Return (status, headers, body, sse_events, delay_s). sse_events => stream them instead."""
        self.requests += 1
        if method_verb == b"DELETE":
            sid = headers.get(b"mcp-session-id")
            if sid in self.sessions:
                self.sessions.discard(sid)
                return 200, [], b"", None, 0.0
            return 404, [], b"", None, 0.0
        if method_verb != b"POST":
            return 405, [(b"Allow", b"POST, DELETE")], b"", None, 0.0
        try:
            msg = orjson.loads(body)
        except orjson.JSONDecodeError:
            return 400, [], self._err(None, -32700, "Parse error"), None, 0.0
        if not isinstance(msg, dict):
            return 400, [], self._err(None, -32600, "Batches are not supported"), None, 0.0
        method = msg.get("method")
        msg_id = msg.get("id")
        if method is None:  # a response from the client
            return 202, [], b"", None, 0.0
        params = msg.get("params") or {}
        meta = params.get("_meta") or {}
        version = meta.get(META_VERSION)
        if version is not None:
            return self._modern(method, msg_id, params, meta, version, headers)
        return self._legacy(method, msg_id, params, meta, headers)

    def _modern(
        self,
        method: str,
        msg_id: Any,
        params: dict[str, Any],
        meta: dict[str, Any],
        version: str,
        headers: dict[bytes, bytes],
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes, list[bytes] | None, float]:
        if version != MODERN:
            data = {"supported": [MODERN], "requested": version}
            return 400, [], self._err(msg_id, -32022, "Unsupported protocol version", data), None, 0.0
        h_version = headers.get(b"mcp-protocol-version")
        h_method = headers.get(b"mcp-method")
        if self.strict_headers and (h_version is None or h_method is None):
            return 400, [], self._err(msg_id, -32020, "Missing standard header"), None, 0.0
        if (h_version is not None and h_version.strip().decode() != version) or (
            h_method is not None and h_method.strip().decode() != method
        ):
            return 400, [], self._err(msg_id, -32020, "Header mismatch"), None, 0.0
        if method == "tools/call":
            h_name = headers.get(b"mcp-name")
            if (self.strict_headers and h_name is None) or (
                h_name is not None and h_name.strip().decode() != params.get("name")
            ):
                return 400, [], self._err(msg_id, -32020, "Header mismatch: Mcp-Name"), None, 0.0
        if msg_id is None:
            return 202, [], b"", None, 0.0
        if method == "tools/call":
            return self._call(msg_id, params, meta, modern=True)
        if method == "tools/list":
            return 200, [], self._ok(msg_id, self.list_modern), None, 0.0
        if method == "server/discover":
            return 200, [], self._ok(msg_id, self.discover), None, 0.0
        return 404, [], self._err(msg_id, -32601, f"Method not found: {method}"), None, 0.0

    def _legacy(
        self,
        method: str,
        msg_id: Any,
        params: dict[str, Any],
        meta: dict[str, Any],
        headers: dict[bytes, bytes],
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes, list[bytes] | None, float]:
        if method == "initialize":
            sid = secrets.token_hex(16).encode()
            self.sessions.add(sid)
            requested = params.get("protocolVersion")
            version = requested if requested in LEGACY_VERSIONS else LEGACY_DEFAULT
            result = orjson.dumps(
                {
                    "protocolVersion": version,
                    "capabilities": {"tools": {"listChanged": False}},
                    "serverInfo": self.server_info,
                }
            )
            return 200, [(b"Mcp-Session-Id", sid)], self._ok(msg_id, result), None, 0.0
        client_sid = headers.get(b"mcp-session-id")
        if client_sid is None:
            return 400, [], self._err(None, -32000, "Bad Request: No valid session ID provided"), None, 0.0
        if client_sid not in self.sessions:
            return 404, [], self._err(None, -32001, "Session not found"), None, 0.0
        if msg_id is None:  # notifications/initialized, cancelled, progress ...
            return 202, [], b"", None, 0.0
        if method == "tools/call":
            return self._call(msg_id, params, meta, modern=False)
        if method == "tools/list":
            return 200, [], self._ok(msg_id, self.list_legacy), None, 0.0
        if method == "ping":
            return 200, [], self._ok(msg_id, b"{}"), None, 0.0
        return 200, [], self._err(msg_id, -32601, f"Method not found: {method}"), None, 0.0

    def _call(
        self, msg_id: Any, params: dict[str, Any], meta: dict[str, Any], *, modern: bool
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes, list[bytes] | None, float]:
        name = params.get("name")
        args = params.get("arguments") or {}
        if name == "big":
            return 200, [], self._ok(msg_id, self.big_modern if modern else self.big_legacy), None, 0.0
        if name == "slow_progress":
            steps = int(args.get("steps", 5))
            delay = float(args.get("delay_ms", 0)) / 1000.0
            result = self._text_result(f"done after {steps} steps", modern)
            token = meta.get("progressToken")
            if token is None:
                return 200, [], self._ok(msg_id, result), None, 0.0
            events = [
                orjson.dumps(
                    {
                        "jsonrpc": "2.0",
                        "method": "notifications/progress",
                        "params": {"progressToken": token, "progress": i + 1, "total": steps},
                    }
                )
                for i in range(steps)
            ]
            events.append(self._ok(msg_id, result))
            return 200, [], b"", events, delay
        if name in self.tool_names:
            text = args.get("text", args.get("query", ""))
            return 200, [], self._ok(msg_id, self._text_result(str(text), modern)), None, 0.0
        return 200, [], self._err(msg_id, -32602, f"Unknown tool: {name}"), None, 0.0

    @staticmethod
    def _text_result(text: str, modern: bool) -> bytes:
        result: dict[str, Any] = {"content": [{"type": "text", "text": text}], "isError": False}
        if modern:
            result["resultType"] = "complete"
        return orjson.dumps(result)


def _head(status: int, extra: list[tuple[bytes, bytes]], ctype: bytes | None, length: int | None) -> bytes:
    parts = [b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"Status"))]
    if ctype is not None:
        parts.append(b"Content-Type: " + ctype + b"\r\n")
    if length is None:
        parts.append(b"Transfer-Encoding: chunked\r\nCache-Control: no-cache\r\nX-Accel-Buffering: no\r\n")
    else:
        parts.append(b"Content-Length: %d\r\n" % length)
    for k, v in extra:
        parts.append(k + b": " + v + b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


def _sse_chunk(data: bytes) -> bytes:
    payload = b"event: message\ndata: " + data + b"\n\n"
    return b"%x\r\n%s\r\n" % (len(payload), payload)


class HttpProtocol(asyncio.Protocol):
    __slots__ = ("app", "body", "busy", "headers", "parser", "transport", "url")

    def __init__(self, app: App) -> None:
        self.app = app
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.headers: dict[bytes, bytes] = {}
        self.body: list[bytes] = []
        self.busy = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.write(_head(400, [(b"Connection", b"close")], None, 0))
                self.transport.close()

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = {}
        self.body = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.lower()] = value

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        verb = self.parser.get_method()
        path = self.url.split(b"?", 1)[0]
        keep_alive = self.parser.should_keep_alive()
        conn = [] if keep_alive else [(b"Connection", b"close")]
        if path == b"/healthz":
            transport.write(_head(200, conn, b"text/plain", 2) + b"ok")
        elif path != b"/mcp":
            transport.write(_head(404, conn, None, 0))
        else:
            status, extra, body, events, delay = self.app.handle(verb, self.headers, b"".join(self.body))
            if events is None and self.app.always_sse and status == 200 and body:
                events = [body]
            if events is not None:
                head = _head(200, extra + conn, b"text/event-stream", None)
                if delay <= 0:
                    transport.write(head + b"".join(_sse_chunk(e) for e in events) + b"0\r\n\r\n")
                else:
                    transport.write(head)
                    transport.pause_reading()
                    asyncio.get_running_loop().create_task(self._stream(events, delay, keep_alive))
                    return
            else:
                ctype = b"application/json" if body else None
                transport.write(_head(status, extra + conn, ctype, len(body)) + body)
        if not keep_alive:
            transport.close()

    async def _stream(self, events: list[bytes], delay: float, keep_alive: bool) -> None:
        transport = self.transport
        assert transport is not None
        for i, event in enumerate(events):
            if transport.is_closing():  # client closed the stream: cancellation
                return
            if i:
                await asyncio.sleep(delay)
            transport.write(_sse_chunk(event))
        transport.write(b"0\r\n\r\n")
        if keep_alive:
            transport.resume_reading()
        else:
            transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


def install_uvloop() -> str:
    try:
        import uvloop
    except ImportError:
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return "uvloop"


async def serve(host: str, port: int, app: App) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: HttpProtocol(app), host, port, backlog=1024)
    actual = server.sockets[0].getsockname()[1]
    print(f"READY {actual}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.upstream_fast", description=__doc__.split("\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 = pick a free port (printed as READY <port>)")
    p.add_argument("--tools", type=int, default=3, help="number of tools in tools/list (>= 3 keeps all real ones)")
    p.add_argument("--strict-headers", action="store_true", help="require MCP-Protocol-Version/Mcp-Method/Mcp-Name")
    p.add_argument("--sse", action="store_true", help="answer every request with a one-event SSE stream")
    p.add_argument("--server", choices=["raw", "uvicorn"], default="raw", help="socket layer (raw = httptools)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print("refusing to bind a non-loopback address", file=sys.stderr)
        return 2
    app = App(args.tools, strict_headers=args.strict_headers, sse=args.sse)
    if args.server == "uvicorn":
        from bench.upstream_asgi import run_uvicorn

        return run_uvicorn(app, args.host, args.port)
    install_uvloop()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.host, args.port, app))
    return 0


if __name__ == "__main__":
    sys.exit(main())
