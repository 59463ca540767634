"""Legacy HTTP+SSE on both sides, and stdio supervision (restart, cleared environment, group kill)."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from mcp import Client
from mcp.client.sse import sse_client
from mcp.shared.exceptions import MCPError
from mcp.types import TextContent

from tests.support import free_port, listening_process, stile_server

BASIC = str(Path(__file__).resolve().parents[1] / "fixtures" / "basic_server.py")


def _text(result: object) -> str:
    content = result.content  # type: ignore[attr-defined]
    assert isinstance(content[0], TextContent)
    return content[0].text


@pytest.fixture(scope="module")
def sse_upstream() -> Iterator[str]:
    port = free_port()
    with listening_process([sys.executable, BASIC, "--transport", "sse", "--port", str(port)], port):
        yield f"http://127.0.0.1:{port}/sse"


@pytest.fixture(scope="module")
def gateway(sse_upstream: str) -> Iterator[str]:
    config = {
        "upstreams": {
            "old": {"url": sse_upstream, "transport": "sse"},
            "proc": {"command": [sys.executable, BASIC], "env": {"ONLY_THIS": "yes"}},
        },
        "virtual_servers": {"v": {"auth": "none"}},
    }
    with stile_server(config, env={"STILE_TEST_SECRET": "must-not-leak"}) as base:
        yield base


@pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
async def test_a_legacy_sse_upstream_serves_clients_of_both_eras(gateway: str, mode: str) -> None:
    async with Client(f"{gateway}/mcp/v", mode=mode) as client:
        result = await client.call_tool("old__echo", {"text": "over sse"})
    assert _text(result) == "over sse"


async def test_old_clients_reach_every_upstream_through_the_legacy_sse_front_door(gateway: str) -> None:
    async with Client(sse_client(f"{gateway}/sse/v"), mode="legacy") as client:
        names = [t.name for t in (await client.list_tools()).tools]
        result = await client.call_tool("proc__echo", {"text": "via /sse"})
    assert {"old__echo", "proc__echo"} <= set(names)
    assert _text(result) == "via /sse"


async def test_a_stdio_child_sees_only_the_environment_its_config_gives_it(gateway: str) -> None:
    async with Client(f"{gateway}/mcp/v", mode="legacy") as client:
        leaked = await client.call_tool("proc__env", {"name": "STILE_TEST_SECRET"})
        given = await client.call_tool("proc__env", {"name": "ONLY_THIS"})
    assert _text(leaked) == "<unset>"
    assert _text(given) == "yes"


async def test_a_crashed_stdio_child_is_restarted_and_serves_again(gateway: str) -> None:
    async with Client(f"{gateway}/mcp/v", mode="2026-07-28") as client:
        first = int(_text(await client.call_tool("proc__pid", {})))
        with pytest.raises(MCPError, match="upstream 'proc': process exited"):
            await client.call_tool("proc__crash", {})
        second = int(_text(await client.call_tool("proc__pid", {})))
    assert second != first
    with pytest.raises(ProcessLookupError):
        os.kill(first, 0)


def test_stopping_stile_kills_the_stdio_process_group() -> None:
    config = {"upstreams": {"proc": {"command": [sys.executable, BASIC]}},
              "virtual_servers": {"v": {"auth": "none"}}}

    async def child_pid(base: str) -> int:
        async with Client(f"{base}/mcp/v", mode="legacy") as client:
            return int(_text(await client.call_tool("proc__pid", {})))

    with stile_server(config) as base:
        pid = asyncio.run(child_pid(base))
        os.kill(pid, 0)  # alive while Stile runs
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
