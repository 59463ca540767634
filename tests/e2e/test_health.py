"""Active health checks over real processes: /readyz follows upstreams with no client traffic, /healthz
answers whatever the upstreams do, and `stile check` explains dead upstreams in seconds."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from mcp import Client
from mcp.shared.exceptions import MCPError

from tests.support import REPO, free_port, listening_process, notes_upstream, stile_server

HANG = [sys.executable, "-c", "import sys; sys.stdin.read()"]  # starts, never answers the handshake
EXITS = [sys.executable, "-c", "import sys; print('loading plugins', file=sys.stderr); sys.exit(3)"]


async def _readyz(base: str) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as http, http.get(f"{base}/readyz") as resp:
        return resp.status, await resp.json()


Want = Callable[[int, dict[str, Any]], bool]


async def _until(base: str, want: Want, deadline_s: float) -> tuple[int, dict[str, Any]]:
    """Poll /readyz (not an MCP request: no upstream traffic) until `want` holds or the deadline passes."""
    end = time.monotonic() + deadline_s
    status, body = await _readyz(base)
    while not want(status, body):
        assert time.monotonic() < end, f"/readyz still {status} {body} after {deadline_s}s"
        await asyncio.sleep(0.05)  # polling /readyz between attempts, bounded by the deadline
        status, body = await _readyz(base)
    return status, body


def _notes_on(port: int) -> Any:
    return listening_process([sys.executable, "-m", "stile.examples_servers.notes_server", "--port", str(port)], port)


async def test_readyz_follows_an_upstream_coming_up_and_going_down_without_client_traffic() -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/mcp"
    config = {"upstreams": {"notes": {"url": url, "connect_timeout": 1, "health_interval": 0.2}},
              "virtual_servers": {"main": {"auth": "none"}}, "health": {"timeout": 1}}
    with stile_server(config) as base:
        status, body = await _until(base, lambda s, b: b["upstreams"]["notes"]["error"] is not None, 10)
        assert status == 503 and body["upstreams"]["notes"]["error"] == f"{url}: connection refused", body
        with _notes_on(port):
            started = time.monotonic()
            await _until(base, lambda s, b: s == 200, 10)
            came_up = time.monotonic() - started
        stopped = time.monotonic()
        status, body = await _until(base, lambda s, b: s == 503, 10)
        went_down = time.monotonic() - stopped
        assert body["upstreams"]["notes"] == {"ready": False, "era": body["upstreams"]["notes"]["era"],
                                              "error": f"{url}: connection refused"}, body
        async with Client(f"{base}/mcp/main", mode="2026-07-28") as c:  # its tools stay listed; calls explain
            tools = [t.name for t in (await c.list_tools()).tools]
            try:
                await c.call_tool("notes__get_note", {"note_id": 1})
                raise AssertionError("a call to a stopped upstream succeeded")
            except MCPError as exc:
                assert exc.error.message == "upstream 'notes': connection refused", exc.error
        assert "notes__get_note" in tools
    print(f"readyz 200 {came_up:.2f}s after the upstream listened, 503 {went_down:.2f}s after it stopped")
    assert came_up < 5 and went_down < 5


async def test_healthz_and_lists_answer_at_once_while_a_stdio_upstream_never_becomes_ready() -> None:
    with notes_upstream() as notes:
        config = {"upstreams": {"notes": {"url": notes},
                                "stuck": {"command": HANG, "connect_timeout": 60},
                                "broken": {"command": EXITS}},
                  "virtual_servers": {"main": {"auth": "none"}}, "health": {"interval": 0.5, "startup_wait": 1}}
        begun = time.monotonic()
        with stile_server(config) as base:  # waits for /healthz (30 s deadline; the old startup took 65 s)
            listening = time.monotonic() - begun
            async with aiohttp.ClientSession() as http, http.get(f"{base}/healthz") as resp:
                assert resp.status == 200
            async with Client(f"{base}/mcp/main", mode="2026-07-28") as c:
                listed = time.monotonic()
                tools = [t.name for t in (await c.list_tools()).tools]
                list_took = time.monotonic() - listed
            assert tools and all(t.startswith("notes__") for t in tools), tools
            status, body = await _until(base, lambda s, b: b["upstreams"]["notes"]["ready"], 10)
            assert status == 503
            assert body["upstreams"]["stuck"]["ready"] is False
            broken = body["upstreams"]["broken"]["error"]
            assert "process exited with code 3; last stderr: loading plugins" in broken, body
            async with Client(f"{base}/mcp/main", mode="legacy") as c:  # past startup_wait: no waiting at all
                again = time.monotonic()
                assert [t.name for t in (await c.list_tools()).tools] == tools
                again_took = time.monotonic() - again
    print(f"listening after {listening:.2f}s, tools/list took {list_took:.2f}s, later {again_took:.2f}s")
    assert list_took < 5  # at most startup_wait for the first discovery attempts, never a retry
    assert again_took < 2  # a retry of the broken upstreams runs in the background, not on this request


def test_stile_check_explains_a_dead_sse_and_a_broken_stdio_upstream_in_seconds() -> None:
    sse = f"http://127.0.0.1:{free_port()}/sse"
    config = {"upstreams": {"legacy": {"url": sse, "transport": "sse"}, "tool": {"command": EXITS}},
              "virtual_servers": {"main": {"auth": "none"}}}
    with tempfile.TemporaryDirectory(prefix="stile-test-") as tmp:
        path = Path(tmp) / "stile.yaml"
        path.write_text(yaml.safe_dump(config), encoding="utf-8")
        begun = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "stile", "check", "--config", str(path)], cwd=REPO,
                              capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "400"})
        took = time.monotonic() - begun
    out = " ".join((done.stdout + done.stderr).split())
    assert f"problem upstream legacy: {sse}: connection refused" in out, out
    assert "problem upstream tool: " in out and "process exited with code 3; last stderr: loading plugins" in out, out
    print(f"stile check took {took:.2f}s")
    assert took < 8, took  # before: 11-16 s per dead SSE or stdio upstream
