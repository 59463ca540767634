"""Test-only HTTP upstream (official `mcp` SDK): one endpoint of a pooled upstream.

Tools: `lookup` (annotated read-only; answers the endpoint's name, after `delay_ms`) and `record` (not
annotated: a side effect; appends "<name> <tag>" to the file `$POOL_LOG` before answering, so the count of
invocations survives the endpoint being SIGKILLed). The name comes from `$POOL_NAME`.

Run: ``python -m tests.e2e.pool_server --port P`` (from the repository root); prints ``READY <port>``.
"""

from __future__ import annotations

import asyncio
import os
import sys

from mcp.server.mcpserver import MCPServer
from mcp_types import ToolAnnotations

from tests.fixtures.inspecting import main

NAME = os.environ.get("POOL_NAME", "endpoint")
LOG = os.environ.get("POOL_LOG", "")
app = MCPServer("pool-member", version="1.0.0", instructions="One endpoint of a pool.")


@app.tool(annotations=ToolAnnotations(read_only_hint=True))
async def lookup(delay_ms: int = 0) -> str:
    """Which endpoint answered (read-only)."""
    if delay_ms:
        await asyncio.sleep(delay_ms / 1000)
    return NAME


@app.tool()
async def record(tag: str, delay_ms: int = 0) -> str:
    """Record one invocation (not idempotent)."""
    fd = os.open(LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{NAME} {tag}\n".encode())
    finally:
        os.close(fd)
    if delay_ms:
        await asyncio.sleep(delay_ms / 1000)
    return NAME


if __name__ == "__main__":
    sys.exit(main(app.streamable_http_app(streamable_http_path="/mcp", host="127.0.0.1"),
                  __doc__.splitlines()[0] if __doc__ else None))
