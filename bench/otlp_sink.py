"""A do-nothing OTLP/HTTP collector for `--observe trace`: accepts span exports, counts them, answers 200.

Prints `READY <port>` once listening. Pinned beside the load generator so the gateway's core measures
only what Stile spends producing and exporting spans.
"""

from __future__ import annotations

import argparse
import asyncio

from aiohttp import web


async def main(port: int) -> None:
    received = {"requests": 0, "bytes": 0}

    async def traces(request: web.Request) -> web.Response:
        body = await request.read()
        received["requests"] += 1
        received["bytes"] += len(body)
        return web.Response(body=b"", content_type="application/x-protobuf")

    async def stats(request: web.Request) -> web.Response:
        return web.json_response(received)

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/traces", traces)
    app.router.add_get("/stats", stats)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    print(f"READY {bound}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    asyncio.run(main(parser.parse_args().port))
