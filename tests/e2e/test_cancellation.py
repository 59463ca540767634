"""A client that goes away cancels its upstream call (both client eras)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support import free_port, listening_process, stile_server

SLOW = Path(__file__).resolve().parents[1] / "fixtures" / "slow_server.py"
MODERN_META = {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
               "io.modelcontextprotocol/clientCapabilities": {}}


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    port = free_port()
    with listening_process([sys.executable, str(SLOW), "--port", str(port)], port):
        config = {"upstreams": {"slow": {"url": f"http://127.0.0.1:{port}/mcp"}},
                  "virtual_servers": {"v": {"auth": "none", "prefix": "never"}}}
        with stile_server(config) as base:
            yield f"{base}/mcp/v"


def _modern(method: str, name: str | None, params: dict[str, Any]) -> tuple[dict[str, str], dict[str, Any]]:
    headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream",
               "MCP-Protocol-Version": "2026-07-28", "Mcp-Method": method}
    if name is not None:
        headers["Mcp-Name"] = name
    return headers, {"jsonrpc": "2.0", "id": 1, "method": method, "params": {**params, "_meta": MODERN_META}}


async def _stats(http: aiohttp.ClientSession, url: str) -> dict[str, int]:
    headers, body = _modern("tools/call", "stats", {"name": "stats", "arguments": {}})
    async with http.post(url, json=body, headers=headers) as resp:
        data = await resp.json()
    return data["result"]["structuredContent"]  # type: ignore[no-any-return]


async def _until(http: aiohttp.ClientSession, url: str, key: str, value: int) -> None:
    """Block (in the upstream, on an event) until its counter reaches `value`; fail after the deadline."""
    headers, body = _modern("tools/call", "wait_for", {"name": "wait_for",
                                                      "arguments": {"key": key, "at_least": value}})
    async with asyncio.timeout(25), http.post(url, json=body, headers=headers) as resp:
        data = await resp.json()
    assert data["result"]["structuredContent"][key] >= value, data


async def _cancelled_calls(http: aiohttp.ClientSession, url: str) -> float:
    async with http.get(url.rsplit("/mcp/", 1)[0] + "/metrics") as resp:
        text = await resp.text()
    return sum(s.value for fam in text_string_to_metric_families(text) for s in fam.samples
               if s.name == "stile_requests_total" and s.labels.get("outcome") == "cancelled")


async def _until_counted(http: aiohttp.ClientSession, url: str, value: float) -> None:
    """The cancelled call is accounted for (metrics and audit share one report), within a deadline."""
    async with asyncio.timeout(20):
        while await _cancelled_calls(http, url) < value:  # each scrape awaits the server: no busy spin
            pass


async def _legacy_session(http: aiohttp.ClientSession, url: str) -> dict[str, str]:
    init = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}}
    hdrs = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
    async with http.post(url, json=init, headers=hdrs) as resp:
        sid = resp.headers["mcp-session-id"]
    return {**hdrs, "Mcp-Session-Id": sid, "MCP-Protocol-Version": "2025-11-25"}


@pytest.mark.parametrize("era", ["legacy", "modern"])
async def test_a_disconnecting_client_cancels_the_upstream_call(endpoint: str, era: str) -> None:
    async with aiohttp.ClientSession() as http:
        before = await _stats(http, endpoint)
        counted = await _cancelled_calls(http, endpoint)
        if era == "legacy":
            headers = await _legacy_session(http, endpoint)
            body: dict[str, Any] = {"jsonrpc": "2.0", "id": 7, "method": "tools/call",
                                    "params": {"name": "block", "arguments": {}}}
        else:
            headers, body = _modern("tools/call", "block", {"name": "block", "arguments": {}})
        async with aiohttp.ClientSession() as caller:
            call = asyncio.ensure_future(caller.post(endpoint, json=body, headers=headers))
            await _until(http, endpoint, "started", before["started"] + 1)
            call.cancel()
        await _until(http, endpoint, "cancelled", before["cancelled"] + 1)
        await _until_counted(http, endpoint, counted + 1)


async def test_notifications_cancelled_from_a_legacy_client_cancels_the_upstream_call(endpoint: str) -> None:
    async with aiohttp.ClientSession() as http:
        before = await _stats(http, endpoint)
        counted = await _cancelled_calls(http, endpoint)
        headers = await _legacy_session(http, endpoint)
        body = {"jsonrpc": "2.0", "id": "c1", "method": "tools/call", "params": {"name": "block", "arguments": {}}}
        call = asyncio.ensure_future(http.post(endpoint, json=body, headers=headers))
        await _until(http, endpoint, "started", before["started"] + 1)
        note = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": "c1"}}
        async with http.post(endpoint, json=note, headers=headers) as resp:
            assert resp.status == 202
        await _until(http, endpoint, "cancelled", before["cancelled"] + 1)
        await _until_counted(http, endpoint, counted + 1)
        resp = await asyncio.wait_for(call, 20)
        resp.close()
