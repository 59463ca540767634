"""FastMCP proxy peer: run by the python of bench/.peers/fastmcp (fastmcp is not a Stile dependency).

One upstream URL => ``create_proxy(url)`` (tool names unchanged); several => an MCPConfig, which
FastMCP mounts with ``<name>_`` prefixes. The proxy mirrors the client's protocol era per request.

    bench/.peers/fastmcp/bin/python bench/peer_fastmcp.py --port 8200 --upstream u1=http://127.0.0.1:9000/mcp
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--upstream", action="append", required=True, help="name=url (repeatable)")
    args = p.parse_args(argv)

    from fastmcp.server import create_proxy
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse

    ups = dict(u.split("=", 1) for u in args.upstream)
    if len(ups) == 1:
        target: object = next(iter(ups.values()))
    else:
        target = {"mcpServers": {name: {"url": url, "transport": "http"} for name, url in ups.items()}}
    proxy = create_proxy(target, name="stile-bench-fastmcp-proxy")

    @proxy.custom_route("/healthz", methods=["GET"])  # type: ignore[untyped-decorator]
    async def healthz(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    proxy.run(
        transport="http",
        host="127.0.0.1",
        port=args.port,
        path="/mcp",
        show_banner=False,
        log_level="WARNING",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
