"""Test-only HTTP upstream (official `mcp` SDK) that counts the JSON-RPC methods it receives.

`GET /stats` answers `{"<method>": count, ...}` for every POSTed message (and `header:<name>` counts
of credential headers that reached it: authorization, x-api-key, cookie), so tests can check from
the upstream's side how often Stile ran `initialize` or `server/discover`. Tools: `echo` (returns
its text) and `hang` (never answers until cancelled: a stand-in for a slow upstream).

Run: ``python tests/e2e/counting_server.py --port 0``; prints ``READY <port>`` when serving.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import sys
from collections import Counter
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import uvicorn
from mcp.server.mcpserver import MCPServer
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

counts: Counter[str] = Counter()
app = MCPServer("counting", version="1.0.0", instructions="Counts what it receives.")


@app.tool()
def echo(text: str) -> str:
    """Return the text unchanged."""
    return text


@app.tool()
async def hang() -> str:
    """Never answer (until the request is cancelled)."""
    await asyncio.Event().wait()
    return "unreachable"


@app.custom_route("/stats", methods=["GET"])  # type: ignore[untyped-decorator]
async def stats(request: Request) -> Response:
    return JSONResponse(dict(counts))


class CountingMiddleware:
    """Raw ASGI: read each POST body, count its JSON-RPC method, then replay the body downstream."""

    def __init__(self, inner: ASGIApp) -> None:
        self.inner = inner

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.inner(scope, receive, send)
            return
        chunks: list[bytes] = []
        while True:
            msg = await receive()
            chunks.append(msg.get("body", b""))
            if msg["type"] != "http.request" or not msg.get("more_body", False):
                break
        body = b"".join(chunks)
        for name, _ in scope["headers"]:
            if name.lower() in (b"authorization", b"x-api-key", b"cookie"):
                counts["header:" + name.decode("latin-1").lower()] += 1
        with contextlib.suppress(ValueError):
            value = json.loads(body)
            if isinstance(value, dict) and isinstance(value.get("method"), str):
                counts[value["method"]] += 1
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.inner(scope, replay, send)


class _AnnouncingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, port: int) -> None:
        super().__init__(config)
        self._port = port

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started:
            print(f"READY {self._port}", flush=True)


async def serve(port: int) -> None:
    asgi = CountingMiddleware(app.streamable_http_app(streamable_http_path="/mcp", host="127.0.0.1"))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(128)
    sock.setblocking(False)
    config = uvicorn.Config(asgi, log_level="warning", lifespan="on", timeout_graceful_shutdown=2)
    try:
        await _AnnouncingServer(config, sock.getsockname()[1]).serve(sockets=[sock])
    finally:
        sock.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
