"""An upstream for the cross-replica tests: resources/updated to the sessions that subscribed, and a slow tool.

`touch(uri)` sends notifications/resources/updated for `uri` to every upstream session that subscribed to it
(so only the replica that relayed the subscription hears it); `slow(steps)` reports progress every 50 ms and
can be cancelled. Prints ``READY <port>`` once listening.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
from typing import Any

import uvicorn
from mcp.server import ServerRequestContext
from mcp.server.mcpserver import Context, MCPServer
from mcp.types import EmptyResult, SubscribeRequestParams, UnsubscribeRequestParams


def build() -> MCPServer:
    app = MCPServer("cluster-upstream", version="1.0.0")
    watchers: dict[str, list[Any]] = {}

    @app.resource("test://watched", name="watched", mime_type="text/plain")
    def watched() -> str:
        return "watched"

    @app.tool(description="Tell the subscribers of `uri` it was updated; how many sessions were told")
    async def touch(uri: str) -> int:
        told = 0
        for session in list(watchers.get(uri, [])):
            try:
                await session.send_resource_updated(uri)
                told += 1
            except Exception:  # noqa: BLE001 - a fixture: a gone session is dropped
                watchers[uri].remove(session)
        return told

    @app.tool(description="Report progress every 50 ms for `steps` steps")
    async def slow(steps: int, ctx: Context) -> str:
        for i in range(steps):
            await ctx.report_progress(i + 1, steps, f"step {i + 1}")
            await asyncio.sleep(0.05)
        return f"done {steps}"

    async def subscribe(ctx: ServerRequestContext, params: SubscribeRequestParams) -> EmptyResult:
        watchers.setdefault(str(params.uri), []).append(ctx.session)
        return EmptyResult()

    async def unsubscribe(ctx: ServerRequestContext, params: UnsubscribeRequestParams) -> EmptyResult:
        sessions = watchers.get(str(params.uri), [])
        if ctx.session in sessions:
            sessions.remove(ctx.session)
        return EmptyResult()

    lowlevel = app._lowlevel_server
    lowlevel.add_request_handler("resources/subscribe", SubscribeRequestParams, subscribe)
    lowlevel.add_request_handler("resources/unsubscribe", UnsubscribeRequestParams, unsubscribe)
    return app


class _Announcing(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, port: int) -> None:
        super().__init__(config)
        self._port = port

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started:
            print(f"READY {self._port}", flush=True)


async def serve() -> None:
    asgi = build().streamable_http_app(streamable_http_path="/mcp", host="127.0.0.1")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    sock.setblocking(False)
    config = uvicorn.Config(asgi, log_level="warning", lifespan="on", timeout_graceful_shutdown=2)
    await _Announcing(config, sock.getsockname()[1]).serve(sockets=[sock])


def main() -> int:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    asyncio.run(serve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
