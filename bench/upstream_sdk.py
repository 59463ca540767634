"""A realistic upstream on the official Python SDK (mcp 2.x ``MCPServer``), same tools as upstream_fast.

Serves both eras on one endpoint (the SDK's own era handling, SSE responses by default). Used with
``python -m bench run --upstream sdk`` to see the gateway in front of a typical server rather than
in front of the fastest possible one.

    python -m bench.upstream_sdk --port 9001 [--tools N]
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from mcp.server.mcpserver import Context, MCPServer
from starlette.requests import Request
from starlette.responses import PlainTextResponse

from bench.upstream_fast import _big_text

BIG = _big_text()


def build(n_tools: int) -> MCPServer:
    mcp = MCPServer("stile-bench-sdk", version="1.0.0", log_level="WARNING")

    @mcp.tool()
    def echo(text: str) -> str:
        """Echo the given text back."""
        return text

    @mcp.tool()
    def big() -> str:
        """Return a ~100 KB text block."""
        return BIG

    @mcp.tool()
    async def slow_progress(ctx: Context, steps: int = 5, delay_ms: int = 0) -> str:
        """Send `steps` progress notifications `delay_ms` apart, then a result."""
        for i in range(steps):
            if i and delay_ms:
                await asyncio.sleep(delay_ms / 1000)
            await ctx.report_progress(i + 1, steps)
        return f"done after {steps} steps"

    def make_filler(i: int):  # type: ignore[no-untyped-def]
        def filler(query: str, limit: int = 10) -> str:
            return query

        filler.__doc__ = (
            f"Synthetic tool number {i} for list benchmarks. Looks up records matching a query "
            "and returns at most `limit` of them as text."
        )
        return filler

    for i in range(3, n_tools):
        mcp.add_tool(make_filler(i), name=f"tool_{i:03d}", title=f"Synthetic tool {i}")

    @mcp.custom_route("/healthz", methods=["GET"])  # type: ignore[untyped-decorator]
    async def healthz(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    return mcp


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.upstream_sdk")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--tools", type=int, default=3)
    args = p.parse_args(argv)
    build(args.tools).run(transport="streamable-http", host="127.0.0.1", port=args.port, streamable_http_path="/mcp")
    return 0


if __name__ == "__main__":
    sys.exit(main())
