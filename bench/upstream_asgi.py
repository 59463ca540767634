"""The fast upstream's logic as a raw ASGI app under uvicorn (uvloop + httptools).

Kept only to measure the socket-layer choice for bench/upstream_fast.py
(``python -m bench.upstream_fast --server uvicorn``); the raw httptools server is the default.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bench.upstream_fast import App


def make_asgi(app: App) -> Any:
    async def asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        if scope["path"] == "/healthz":
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
            await send({"type": "http.response.body", "body": b"ok"})
            return
        if scope["path"] != "/mcp":
            await send({"type": "http.response.start", "status": 404, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        chunks = []
        more = True
        while more:
            msg = await receive()
            chunks.append(msg.get("body", b""))
            more = msg.get("more_body", False)
        headers = dict(scope["headers"])
        status, extra, body, events, delay = app.handle(scope["method"].encode(), headers, b"".join(chunks))
        if events is not None:
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [
                        (b"content-type", b"text/event-stream"),
                        (b"cache-control", b"no-cache"),
                        *extra,
                    ],
                }
            )
            for i, event in enumerate(events):
                if i and delay > 0:
                    await asyncio.sleep(delay)
                await send(
                    {
                        "type": "http.response.body",
                        "body": b"event: message\ndata: " + event + b"\n\n",
                        "more_body": True,
                    }
                )
            await send({"type": "http.response.body", "body": b""})
            return
        hdrs = [(b"content-type", b"application/json")] if body else []
        await send({"type": "http.response.start", "status": status, "headers": hdrs + extra})
        await send({"type": "http.response.body", "body": body})

    return asgi


def run_uvicorn(app: App, host: str, port: int) -> int:
    import socket

    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    print(f"READY {sock.getsockname()[1]}", flush=True)
    config = uvicorn.Config(
        make_asgi(app), loop="uvloop", http="httptools", lifespan="off", log_level="warning", access_log=False
    )
    uvicorn.Server(config).run(sockets=[sock])
    return 0
