"""Reference pass-through proxy: the floor any Python MCP gateway on this stack can reach.

A raw ASGI app under uvicorn (uvloop + httptools) forwarding ``/mcp/<anything>`` to one upstream URL
with a pooled aiohttp ``ClientSession``: no parsing, no policies, MCP headers copied, SSE streamed
chunk by chunk. It is the harness's ``proxy`` target, so Stile's numbers can be read against "what a
plain proxy on the same stack costs" (DESIGN.md §7 quotes ~0.3 ms p50 and ~8,000 req/s per core).
It also lets the gateway code path of the harness be exercised before Stile exists.

    python -m bench.proxy_ref --upstream http://127.0.0.1:9000/mcp --port 8100
"""

from __future__ import annotations

import argparse
import socket
import sys
from typing import Any

FORWARD = {
    b"content-type",
    b"accept",
    b"mcp-session-id",
    b"mcp-protocol-version",
    b"mcp-method",
    b"mcp-name",
    b"last-event-id",
}
BACK = ("Content-Type", "Mcp-Session-Id", "Cache-Control")


def make_app(upstream: str) -> Any:
    import aiohttp

    state: dict[str, Any] = {}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    connector = aiohttp.TCPConnector(limit=1024, keepalive_timeout=60)
                    state["session"] = aiohttp.ClientSession(connector=connector, auto_decompress=False)
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    await state["session"].close()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        path = scope["path"]
        if path == "/healthz":
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
            await send({"type": "http.response.body", "body": b"ok"})
            return
        if not path.startswith("/mcp"):
            await send({"type": "http.response.start", "status": 404, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        chunks = []
        more = True
        while more:
            msg = await receive()
            chunks.append(msg.get("body", b""))
            more = msg.get("more_body", False)
        headers = {
            k.decode("latin-1"): v.decode("latin-1")
            for k, v in scope["headers"]
            if k in FORWARD or k.startswith(b"mcp-param-")
        }
        session = state["session"]
        async with session.request(scope["method"], upstream, data=b"".join(chunks), headers=headers) as resp:
            out = [(k.lower().encode(), resp.headers[k].encode("latin-1")) for k in BACK if k in resp.headers]
            ctype = resp.headers.get("Content-Type", "")
            await send({"type": "http.response.start", "status": resp.status, "headers": out})
            if ctype.startswith("text/event-stream"):
                async for chunk in resp.content.iter_any():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b""})
            else:
                await send({"type": "http.response.body", "body": await resp.read()})

    return app


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    p = argparse.ArgumentParser(prog="python -m bench.proxy_ref")
    p.add_argument("--upstream", required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    args = p.parse_args(argv)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    print(f"READY {sock.getsockname()[1]}", flush=True)
    config = uvicorn.Config(
        make_app(args.upstream),
        loop="uvloop",
        http="httptools",
        lifespan="on",
        log_level="warning",
        access_log=False,
    )
    uvicorn.Server(config).run(sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(main())
