"""Scale-out: two `stile serve` replicas sharing STILE_SESSION_KEY resume each other's legacy sessions.

No sticky sessions: the legacy session state travels sealed inside the Mcp-Session-Id, so a client whose
requests a load balancer spreads over replicas keeps working; a replica with another key refuses it.
"""

from __future__ import annotations

import base64
import json
import secrets
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import aiohttp
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.types import TextContent, TextResourceContents

from stile.wire import sse
from tests.e2e.helpers import LEGACY_HEADERS, initialize_body
from tests.support import files_upstream_config, notes_upstream, stile_server

CONFIG: dict[str, Any] = {
    "virtual_servers": {"all": {"upstreams": ["notes", "files"], "auth": "none"},
                        "notes-only": {"upstreams": ["notes"], "auth": "none"}},
}


@dataclass(frozen=True)
class Replicas:
    a: str
    b: str
    stranger: str  # same config, different session key


def new_key() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode()


@pytest.fixture(scope="module")
def replicas() -> Iterator[Replicas]:
    shared, other = new_key(), new_key()
    with ExitStack() as stack:
        notes = stack.enter_context(notes_upstream())
        config = {**CONFIG, "upstreams": {"notes": {"url": notes}, "files": files_upstream_config()}}
        a = stack.enter_context(stile_server(config, env={"STILE_SESSION_KEY": shared}))
        b = stack.enter_context(stile_server(config, env={"STILE_SESSION_KEY": shared}))
        stranger = stack.enter_context(stile_server(config, env={"STILE_SESSION_KEY": other}))
        yield Replicas(a, b, stranger)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def rpc(http: aiohttp.ClientSession, url: str, sid: str | None, body: dict[str, Any]) -> tuple[int, Any]:
    headers = {**LEGACY_HEADERS, "MCP-Protocol-Version": "2025-11-25"}
    if sid is not None:
        headers["Mcp-Session-Id"] = sid
    async with http.post(url, json=body, headers=headers) as resp:
        raw = await resp.read()
        if resp.headers.get("content-type", "").startswith("text/event-stream"):
            events = [json.loads(e.data) for e in sse.Decoder().feed(raw)]
            return resp.status, events[-1]
        return resp.status, json.loads(raw) if raw else None


async def open_session(http: aiohttp.ClientSession, url: str) -> str:
    async with http.post(url, json=initialize_body(), headers=LEGACY_HEADERS) as resp:
        assert resp.status == 200
        return resp.headers["mcp-session-id"]


def call(rid: int, name: str, args: dict[str, Any]) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": rid, "method": "tools/call", "params": {"name": name, "arguments": args}}


async def test_a_session_initialized_on_one_replica_is_served_by_the_other_and_back(
    replicas: Replicas, http: aiohttp.ClientSession
) -> None:
    a, b = f"{replicas.a}/mcp/all", f"{replicas.b}/mcp/all"
    sid = await open_session(http, a)
    status, _ = await rpc(http, b, sid, {"jsonrpc": "2.0", "method": "notifications/initialized"})
    assert status == 202
    status, listed = await rpc(http, b, sid, {"jsonrpc": "2.0", "id": 2, "method": "tools/list"})
    assert status == 200
    assert "notes__get_note" in [t["name"] for t in listed["result"]["tools"]]
    for rid, url in enumerate([a, b, a, b], start=3):
        status, got = await rpc(http, url, sid, call(rid, "notes__get_note", {"note_id": 1}))
        assert status == 200, got
        assert got["id"] == rid
        assert got["result"]["content"][0]["text"] == "Stile fronts this server."
    status, read = await rpc(http, b, sid, {"jsonrpc": "2.0", "id": 9, "method": "resources/read",
                                            "params": {"uri": "files+file:///readme"}})
    assert status == 200
    assert read["result"]["contents"][0]["text"] == "Files served over stdio through Stile."


async def test_the_other_replica_keeps_the_negotiated_version_and_capabilities(
    replicas: Replicas, http: aiohttp.ClientSession
) -> None:
    body = initialize_body()
    body["params"]["protocolVersion"] = "2025-06-18"
    async with http.post(f"{replicas.a}/mcp/all", json=body, headers=LEGACY_HEADERS) as resp:
        assert (await resp.json())["result"]["protocolVersion"] == "2025-06-18"
        sid = resp.headers["mcp-session-id"]
    headers = {**LEGACY_HEADERS, "Mcp-Session-Id": sid, "MCP-Protocol-Version": "2025-06-18"}
    async with http.post(f"{replicas.b}/mcp/all", json={"jsonrpc": "2.0", "id": 2, "method": "ping"},
                         headers=headers) as resp:
        assert resp.status == 200
        assert (await resp.json()) == {"jsonrpc": "2.0", "id": 2, "result": {}}


async def test_a_replica_with_a_different_key_answers_404_to_the_session(
    replicas: Replicas, http: aiohttp.ClientSession
) -> None:
    sid = await open_session(http, f"{replicas.a}/mcp/all")
    status, _ = await rpc(http, f"{replicas.b}/mcp/all", sid, {"jsonrpc": "2.0", "id": 2, "method": "tools/list"})
    assert status == 200
    status, body = await rpc(http, f"{replicas.stranger}/mcp/all", sid,
                             {"jsonrpc": "2.0", "id": 2, "method": "tools/list"})
    assert status == 404
    assert "result" not in (body or {})


async def test_a_session_for_one_virtual_server_is_404_on_another_even_on_the_same_key(
    replicas: Replicas, http: aiohttp.ClientSession
) -> None:
    sid = await open_session(http, f"{replicas.a}/mcp/all")
    status, _ = await rpc(http, f"{replicas.b}/mcp/notes-only", sid,
                          {"jsonrpc": "2.0", "id": 2, "method": "tools/list"})
    assert status == 404


class Alternating(httpx2.AsyncBaseTransport):
    """Sends each POST to the next replica in turn, like a round-robin load balancer without stickiness."""

    def __init__(self, ports: list[int]) -> None:
        self.inner = httpx2.AsyncHTTPTransport()
        self.ports = ports
        self.turn = 0
        self.posts: Counter[int] = Counter()

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        if request.method == "POST":
            port = self.ports[self.turn % len(self.ports)]
            self.turn += 1
            self.posts[port] += 1
            request.url = request.url.copy_with(port=port)
            request.headers["host"] = f"127.0.0.1:{port}"
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


async def test_an_sdk_client_spread_over_both_replicas_keeps_one_legacy_session(replicas: Replicas) -> None:
    transport = Alternating([port_of(replicas.a), port_of(replicas.b)])
    async with httpx2.AsyncClient(transport=transport, timeout=30) as http_client:
        mcp_transport = streamable_http_client(f"{replicas.a}/mcp/all", http_client=http_client,
                                               terminate_on_close=False)
        async with Client(mcp_transport, mode="legacy") as c:
            tools = [t.name for t in (await c.list_tools()).tools]
            texts = []
            for i in range(6):
                result = await c.call_tool("files__read_env", {"name": "FILES_ROOT"} if i % 2 else {"name": "HOME"})
                assert isinstance(result.content[0], TextContent)
                texts.append(result.content[0].text)
            index = await c.read_resource("notes+notes://index")
            prompt = await c.get_prompt("notes__summarize", {"style": "terse"})
    assert "notes__count_slowly" in tools
    assert texts[0] == "<unset>" and texts[1].endswith("examples")
    assert isinstance(index.contents[0], TextResourceContents) and index.contents[0].text.startswith("welcome")
    assert prompt.messages
    assert all(transport.posts[p] >= 4 for p in transport.ports), transport.posts
