"""Test-only HTTP upstream (official `mcp` SDK) that counts the JSON-RPC methods it receives.

`GET /stats` answers `{"<method>": count, ...}` for every POSTed message (and `header:<name>` counts
of credential headers that reached it: authorization, x-api-key, cookie), so tests can check from
the upstream's side how often Stile ran `initialize` or `server/discover`. Tools: `echo` (returns
its text) and `hang` (never answers until cancelled: a stand-in for a slow upstream).

Run: ``python -m tests.e2e.counting_server --port 0`` (from the repository root); prints ``READY <port>`` when serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections import Counter

from mcp.server.mcpserver import MCPServer
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from tests.fixtures.inspecting import Inspecting, main

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


def _count(headers: dict[str, str], body: bytes) -> None:
    for name in ("authorization", "x-api-key", "cookie"):
        if name in headers:
            counts["header:" + name] += 1
    with contextlib.suppress(ValueError):
        value = json.loads(body)
        if isinstance(value, dict) and isinstance(value.get("method"), str):
            counts[value["method"]] += 1


if __name__ == "__main__":
    sys.exit(main(Inspecting(app.streamable_http_app(streamable_http_path="/mcp", host="127.0.0.1"), _count),
                  __doc__.splitlines()[0] if __doc__ else None))
