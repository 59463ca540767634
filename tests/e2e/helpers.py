"""Shared helpers for end-to-end tests: extra real upstreams and small raw-HTTP utilities."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import aiohttp

from tests.support import REPO, free_port, listening_process, missing_files, ready_process

NODE = REPO / "tools" / "node22" / "node_modules" / ".bin" / "node"
EVERYTHING_DIR = REPO / "tools" / "everything"
EVERYTHING_JS = EVERYTHING_DIR / "node_modules" / "@modelcontextprotocol" / "server-everything" / "dist" / "index.js"
LOOPBACK_MJS = REPO / "tools" / "loopback.mjs"
MODERN = "2026-07-28"


@contextmanager
def counting_upstream(deadline_s: float = 30.0) -> Iterator[str]:
    """Run tests/e2e/counting_server.py on a free port; yield its base URL (MCP at /mcp, counts at /stats)."""
    with ready_process([sys.executable, "-u", "-m", "tests.e2e.counting_server", "--port", "0"], "counting upstream",
                       deadline_s=deadline_s) as port:
        yield f"http://127.0.0.1:{port}"


def everything_missing() -> str | None:
    return missing_files(NODE, EVERYTHING_JS, LOOPBACK_MJS)


@contextmanager
def everything_upstream() -> Iterator[str]:
    """`@modelcontextprotocol/server-everything` (TypeScript SDK, legacy-only), bound to 127.0.0.1."""
    missing = everything_missing()
    if missing is not None:
        raise RuntimeError(missing)
    port = free_port()
    env = {**os.environ, "PORT": str(port)}
    argv = [str(NODE), "--import", str(LOOPBACK_MJS), str(EVERYTHING_JS), "streamableHttp"]
    with listening_process(argv, port, env=env, cwd=EVERYTHING_DIR):
        yield f"http://127.0.0.1:{port}/mcp"


async def upstream_counts(base: str) -> dict[str, int]:
    async with aiohttp.ClientSession() as http, http.get(f"{base}/stats") as resp:
        assert resp.status == 200
        data: dict[str, int] = await resp.json()
        return data


def modern_meta() -> dict[str, Any]:
    return {"io.modelcontextprotocol/protocolVersion": MODERN, "io.modelcontextprotocol/clientCapabilities": {}}


def modern_headers(method: str, name: str | None = None) -> dict[str, str]:
    h = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream",
         "MCP-Protocol-Version": MODERN, "Mcp-Method": method}
    if name is not None:
        h["Mcp-Name"] = name
    return h


LEGACY_HEADERS = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}


def initialize_body(rid: int = 1) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": rid, "method": "initialize",
            "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                       "clientInfo": {"name": "stile-tests", "version": "0"}}}
