"""Trace context a client sends in `_meta` with CR/LF or non-Latin-1 text is dropped, the call proceeds
normally (legacy session and modern `_meta`), over real sockets against a real SDK upstream."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest

from tests.e2e.helpers import LEGACY_HEADERS, initialize_body, modern_headers, modern_meta
from tests.support import notes_upstream, stile_server

TP = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
BAD = [
    {"traceparent": TP, "tracestate": "vendor=a\r\nX-Injected: 1"},
    {"traceparent": TP, "tracestate": "vendor=snow\u2603man"},
    {"traceparent": TP, "tracestate": "vendor=caf\u00e9"},  # Latin-1, but not the ASCII tracestate allows
    {"traceparent": TP + "\r\nX-Injected: 1", "tracestate": "vendor=a"},
    {"traceparent": "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-\u2603", "tracestate": "k=\n"},
    {"traceparent": TP, "tracestate": "x" * 600},
]


@pytest.fixture(scope="module")
def base() -> Iterator[str]:
    with notes_upstream() as notes:
        config = {"upstreams": {"notes": {"url": notes}}, "virtual_servers": {"main": {"auth": "none"}}}
        with stile_server(config) as url:
            yield url


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def post(http: aiohttp.ClientSession, url: str, body: dict[str, Any], headers: dict[str, str],
               ) -> tuple[int, dict[str, str], bytes]:
    async with http.post(url, data=json.dumps(body).encode(), headers={**LEGACY_HEADERS, **headers}) as resp:
        return resp.status, {k.lower(): v for k, v in resp.headers.items()}, await resp.read()


def result_of(raw: bytes) -> dict[str, Any]:
    text = raw.decode()
    if text.lstrip().startswith("{"):
        msg: dict[str, Any] = json.loads(text)
    else:  # an SSE answer: the last data line is the response
        msg = json.loads([line[5:] for line in text.splitlines() if line.startswith("data:")][-1])
    assert "error" not in msg, msg
    return msg


@pytest.mark.parametrize("trace", BAD)
async def test_bad_trace_context_in_a_legacy_session_is_ignored(
    base: str, http: aiohttp.ClientSession, trace: dict[str, str]
) -> None:
    status, headers, _ = await post(http, f"{base}/mcp/main", initialize_body(), {})
    assert status == 200
    sid = {"Mcp-Session-Id": headers["mcp-session-id"], "MCP-Protocol-Version": "2025-11-25"}
    await post(http, f"{base}/mcp/main", {"jsonrpc": "2.0", "method": "notifications/initialized"}, sid)
    body = {"jsonrpc": "2.0", "id": 3, "method": "tools/call",
            "params": {"name": "notes__list_notes", "arguments": {}, "_meta": trace}}
    status, _, raw = await post(http, f"{base}/mcp/main", body, sid)
    assert status == 200, raw
    assert "content" in result_of(raw)["result"]


@pytest.mark.parametrize("trace", BAD)
async def test_bad_trace_context_in_modern_meta_is_ignored(
    base: str, http: aiohttp.ClientSession, trace: dict[str, str]
) -> None:
    body = {"jsonrpc": "2.0", "id": 4, "method": "tools/call",
            "params": {"name": "notes__list_notes", "arguments": {}, "_meta": {**modern_meta(), **trace}}}
    status, _, raw = await post(http, f"{base}/mcp/main", body, modern_headers("tools/call", "notes__list_notes"))
    assert status == 200, raw
    assert "content" in result_of(raw)["result"]
