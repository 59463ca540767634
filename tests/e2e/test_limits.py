"""Hostile upstreams against a running Stile: oversized bodies, SSE events and stdio lines are refused with
a clear error naming the upstream and the limit (the upstream keeps working), and a legacy SSE upstream
cannot send Stile's POSTs (with its configured secret headers) to another origin."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from tests.e2e.helpers import LEGACY_HEADERS, initialize_body
from tests.support import REPO, ready_process, stile_server

LIMIT = 65536


@dataclass
class Env:
    base: str
    hostile: str


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    with ready_process([sys.executable, "-u", "-m", "tests.fixtures.hostile_server"], "hostile upstream") as port:
        hostile = f"http://127.0.0.1:{port}"
        config = {
            "upstreams": {
                "web": {"url": f"{hostile}/mcp", "timeout": 20},
                "slow": {"url": f"{hostile}/mcp", "timeout": 20, "first_byte_timeout": 0.5},
                "stream": {"url": f"{hostile}/sse", "transport": "sse", "timeout": 20},
                "proc": {"command": [sys.executable, "-m", "tests.fixtures.hostile_stdio"], "cwd": str(REPO),
                         "timeout": 20},
            },
            "virtual_servers": {"main": {"auth": "none"}},
            "limits": {"max_upstream_response_bytes": LIMIT},
        }
        with stile_server(config) as base:
            yield Env(base, hostile)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def post(http: aiohttp.ClientSession, url: str, body: dict[str, Any], sid: str | None = None,
               ) -> tuple[int, dict[str, str], Any]:
    headers = {**LEGACY_HEADERS, **({"Mcp-Session-Id": sid, "MCP-Protocol-Version": "2025-11-25"} if sid else {})}
    async with http.post(url, data=json.dumps(body).encode(), headers=headers) as resp:
        raw = await resp.read()
        assert b"Traceback" not in raw
        return resp.status, {k.lower(): v for k, v in resp.headers.items()}, json.loads(raw) if raw else None


async def session(http: aiohttp.ClientSession, url: str) -> str:
    status, headers, _ = await post(http, url, initialize_body())
    assert status == 200
    sid = headers["mcp-session-id"]
    await post(http, url, {"jsonrpc": "2.0", "method": "notifications/initialized"}, sid)
    return sid


async def call(http: aiohttp.ClientSession, base: str, sid: str, tool: str) -> dict[str, Any]:
    status, _, reply = await post(http, f"{base}/mcp/main", {
        "jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": tool, "arguments": {}}}, sid)
    assert status == 200, reply
    assert isinstance(reply, dict)
    return reply


async def hostile_stats(http: aiohttp.ClientSession, hostile: str) -> dict[str, int]:
    async with http.get(f"{hostile}/stats") as resp:
        data: dict[str, int] = await resp.json()
        return data


async def test_first_byte_timeout_bounds_the_wait_for_an_answer_to_start(env: Env, http: aiohttp.ClientSession) -> None:
    sid = await session(http, f"{env.base}/mcp/main")
    reply = await call(http, env.base, sid, "slow__silent")
    assert reply["error"]["message"] == "upstream 'slow': no response to tools/call started within 0.5s", reply
    assert (await call(http, env.base, sid, "slow__ok"))["result"]["content"][0]["text"] == "ok"


@pytest.mark.parametrize(("upstream", "tool", "what"), [
    ("web", "huge", "response"), ("web", "endless", "SSE event"), ("stream", "huge", "SSE event"),
    ("stream", "endless", "SSE event"), ("proc", "huge", "stdout line"), ("proc", "huge_tail", "stdout line")])
async def test_an_oversized_upstream_answer_is_a_clear_error_and_the_upstream_keeps_working(
    env: Env, http: aiohttp.ClientSession, upstream: str, tool: str, what: str
) -> None:
    sid = await session(http, f"{env.base}/mcp/main")
    start = time.monotonic()
    reply = await call(http, env.base, sid, f"{upstream}__{tool}")
    assert time.monotonic() - start < 15, "refused at the limit, not by the call timeout"
    error = reply.get("error")
    assert error is not None, str(reply)[:300]
    assert error["code"] == -32001
    assert f"upstream {upstream!r}" in error["message"] and what in error["message"]
    assert f"max_upstream_response_bytes ({LIMIT} bytes)" in error["message"]
    ok = await call(http, env.base, sid, f"{upstream}__ok")
    assert ok["result"]["content"][0]["text"] == "ok", ok


async def test_an_endless_event_is_cut_off_rather_than_buffered(env: Env, http: aiohttp.ClientSession) -> None:
    before = (await hostile_stats(http, env.hostile))["aborted"]
    sid = await session(http, f"{env.base}/mcp/main")
    reply = await call(http, env.base, sid, "web__endless")
    assert "error" in reply
    deadline = time.monotonic() + 10
    while (await hostile_stats(http, env.hostile))["aborted"] <= before:  # the writer sees Stile hang up
        assert time.monotonic() < deadline, "Stile kept reading the endless event"
        await asyncio.sleep(0.05)  # polling the upstream's counter between attempts
    taken = (await hostile_stats(http, env.hostile))["endless_bytes"]
    assert taken < 16 * 1024 * 1024, f"Stile took {taken} bytes of one event (limit {LIMIT}, plus socket buffers)"


def test_a_legacy_sse_upstream_naming_another_origin_gets_no_post() -> None:
    with ready_process([sys.executable, "-u", "-m", "tests.fixtures.hostile_server"], "hostile upstream") as port:
        hostile = f"http://127.0.0.1:{port}"
        config = {"upstreams": {"thief": {"url": f"{hostile}/sse-steal", "transport": "sse", "connect_timeout": 5,
                                          "headers": {"Authorization": "Bearer upstream-secret"}}},
                  "virtual_servers": {"main": {"auth": "none"}}}
        with stile_server(config) as base:
            async def check() -> None:
                async with aiohttp.ClientSession() as http:
                    deadline = time.monotonic() + 20
                    while True:
                        async with http.get(f"{base}/readyz") as resp:
                            ready = await resp.json()
                        error = ready["upstreams"]["thief"]["error"] or ""
                        if error or time.monotonic() > deadline:
                            break
                        await asyncio.sleep(0.05)  # polling readiness between attempts
                    assert "another origin" in error, ready
                    assert f"127.0.0.1:{port}" in error
                    sid = await session(http, f"{base}/mcp/main")
                    await post(http, f"{base}/mcp/main", {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}, sid)
                    stats = await hostile_stats(http, hostile)
                    assert stats["streams"] >= 1, stats
                    assert stats["stolen"] == 0, stats

            asyncio.run(check())
