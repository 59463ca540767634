"""Benchmark scenarios and how a request of each looks on the wire, per protocol era."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

import orjson

MODERN = "2026-07-28"
LEGACY = "2025-11-25"
ERAS = ("legacy", "modern")
ACCEPT = "application/json, text/event-stream"


@dataclass(frozen=True)
class Scenario:
    name: str
    summary: str
    method: str
    tool: str | None = None
    arguments: dict[str, Any] = field(default_factory=dict)
    progress_steps: int = 0  # > 0: send a progressToken and expect this many notifications on SSE
    expect_tools: int | None = None  # tools/list: how many tools the response must hold
    # how the upstreams are laid out
    direct_tools: int = 3  # tools on the single upstream the `direct` target talks to
    stile_upstreams: int = 1  # upstreams behind the gateway's virtual server
    stile_tools: int = 3  # tools on each of them
    stile_prefix: str | None = "never"  # virtual server `prefix:`; None = the gateway's default (prefixed)
    note: str = ""


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            "call-small",
            "tools/call `echo` with a short text (~100 B each way)",
            "tools/call",
            tool="echo",
            arguments={"text": "hello from the stile bench"},
        ),
        Scenario(
            "call-100k",
            "tools/call `big`: a ~100 KB text result",
            "tools/call",
            tool="big",
        ),
        Scenario(
            "list-500",
            "tools/list of 500 tools (stile: 5 upstreams x 100 tools, default prefixing)",
            "tools/list",
            expect_tools=500,
            direct_tools=500,
            stile_upstreams=5,
            stile_tools=100,
            stile_prefix=None,
            note=(
                "direct = one upstream listing 500 tools (same response size, no fan-out): a fair proxy "
                "for the cost the client sees without a gateway, not an aggregation of 5 servers"
            ),
        ),
        Scenario(
            "call-progress",
            "tools/call `slow_progress`: 5 progress notifications + result over SSE",
            "tools/call",
            tool="slow_progress",
            arguments={"steps": 5, "delay_ms": 0},
            progress_steps=5,
        ),
    )
}


# Credentials for a gateway with authentication on (`--policies on`), set by the harness.
EXTRA_HEADERS: dict[str, str] = json.loads(os.environ.get("STILE_BENCH_HEADERS", "{}"))


def request(scn: Scenario, era: str, req_id: int, session_id: str | None) -> tuple[dict[str, str], bytes]:
    """Headers and body for one request of ``scn`` in ``era``."""
    params: dict[str, Any] = {}
    if scn.tool is not None:
        params["name"] = scn.tool
        params["arguments"] = scn.arguments
    meta: dict[str, Any] = {}
    if scn.progress_steps:
        meta["progressToken"] = req_id
    headers = {"Content-Type": "application/json", "Accept": ACCEPT, **EXTRA_HEADERS}
    if era == "modern":
        meta["io.modelcontextprotocol/protocolVersion"] = MODERN
        meta["io.modelcontextprotocol/clientCapabilities"] = {}
        headers["MCP-Protocol-Version"] = MODERN
        headers["Mcp-Method"] = scn.method
        if scn.tool is not None:
            headers["Mcp-Name"] = scn.tool
    else:
        headers["MCP-Protocol-Version"] = LEGACY
        if session_id is not None:
            headers["Mcp-Session-Id"] = session_id
    if meta:
        params["_meta"] = meta
    body = orjson.dumps({"jsonrpc": "2.0", "id": req_id, "method": scn.method, "params": params})
    return headers, body


def initialize_request() -> tuple[dict[str, str], bytes]:
    body = orjson.dumps(
        {
            "jsonrpc": "2.0",
            "id": 0,
            "method": "initialize",
            "params": {
                "protocolVersion": LEGACY,
                "capabilities": {},
                "clientInfo": {"name": "stile-bench", "version": "1.0.0"},
            },
        }
    )
    return {"Content-Type": "application/json", "Accept": ACCEPT, **EXTRA_HEADERS}, body


def initialized_notification(session_id: str | None) -> tuple[dict[str, str], bytes]:
    headers = {"Content-Type": "application/json", "Accept": ACCEPT, "MCP-Protocol-Version": LEGACY, **EXTRA_HEADERS}
    if session_id is not None:
        headers["Mcp-Session-Id"] = session_id
    return headers, b'{"jsonrpc":"2.0","method":"notifications/initialized"}'
