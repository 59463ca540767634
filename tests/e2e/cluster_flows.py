"""The flows every multi-process deployment must pass, whichever process each request lands on.

Each takes a `Deployment` (tests/e2e/cluster.py) and talks only to its load balancer; where it matters it
reads the replicas' own /metrics to show the requests were spread over every replica.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.types import (
    CreateMessageRequestParams,
    CreateMessageResult,
    ElicitRequestParams,
    ElicitResult,
    ResourceUpdatedNotification,
    TextContent,
    TextResourceContents,
    ToolListChangedNotification,
)

from stile.wire import sse
from tests.e2e.cluster import Deployment, metric, requests_on
from tests.e2e.helpers import LEGACY_HEADERS, initialize_body, modern_headers, modern_meta

WATCHED = "cl+test://watched"


async def on_sampling(ctx: Any, params: CreateMessageRequestParams) -> CreateMessageResult:
    asked = params.messages[0].content
    text = asked.text if isinstance(asked, TextContent) else "?"
    return CreateMessageResult(role="assistant", model="test-model",
                               content=TextContent(type="text", text=f"sampled<{text}>"))


async def on_elicitation(ctx: Any, params: ElicitRequestParams) -> ElicitResult:
    schema = getattr(params, "requested_schema", None) or {}
    return ElicitResult(action="accept", content={str(k): "Ada" for k in schema.get("properties", {})})


def text_of(result: Any) -> str:
    block = result.content[0]
    assert isinstance(block, TextContent), block
    return block.text


@asynccontextmanager
async def sdk_client(dep: Deployment, mode: str, vs: str = "open", headers: dict[str, str] | None = None,
                     **kw: Any) -> AsyncIterator[Client]:
    async with httpx2.AsyncClient(timeout=30, headers=headers) as http:
        transport = streamable_http_client(f"{dep.lb}/mcp/{vs}", http_client=http, terminate_on_close=False)
        async with Client(transport, mode=mode, sampling_callback=on_sampling,  # type: ignore[arg-type]
                          elicitation_callback=on_elicitation, **kw) as c:  # type: ignore[arg-type]
            yield c


@asynccontextmanager
async def spread_over_every_replica(dep: Deployment) -> AsyncIterator[None]:
    """Asserts that each replica served some of the requests made inside the block."""
    async with httpx2.AsyncClient(timeout=10) as http:
        before = [await requests_on(http, dep, i) for i in range(len(dep.ports))]
        yield
        after = [await requests_on(http, dep, i) for i in range(len(dep.ports))]
    assert all(a > b for a, b in zip(after, before, strict=True)), (before, after)


async def legacy_client_flows(dep: Deployment) -> None:
    """Tools, resources, prompts, progress, sampling and elicitation of one legacy SDK session."""
    progress: list[float] = []

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        progress.append(done)

    async with spread_over_every_replica(dep), sdk_client(dep, "legacy") as c:
        tools = [t.name for t in (await c.list_tools()).tools]
        assert {"fx__test_sampling", "cl__slow", "notes__add_note"} <= set(tools), tools
        assert text_of(await c.call_tool("fx__test_simple_text", {})) == "This is a simple text response for testing."
        read = await c.read_resource(WATCHED)
        assert isinstance(read.contents[0], TextResourceContents) and read.contents[0].text == "watched"
        assert (await c.get_prompt("fx__test_simple_prompt")).messages
        for i in range(4):  # the answer POST lands on another replica than the call most of the time
            got = await c.call_tool("fx__test_sampling", {"prompt": f"q{i}"})
            assert text_of(got) == f"LLM response: sampled<q{i}>"
        elicited = await c.call_tool("fx__test_elicitation", {"message": "Who are you?"})
        assert json.loads(text_of(elicited).split("content=", 1)[1]) == {"username": "Ada", "email": "Ada"}
        assert text_of(await c.call_tool("cl__slow", {"steps": 3}, progress_callback=on_progress)) == "done 3"
    assert progress == [1, 2, 3]


async def modern_input_required(dep: Deployment) -> None:
    """A legacy upstream's sampling reaches a 2026-07-28 client as input_required; its retries land anywhere."""
    async with spread_over_every_replica(dep), sdk_client(dep, "2026-07-28") as c:
        for i in range(4):
            got = await c.call_tool("fxl__test_sampling", {"prompt": f"m{i}"})
            assert text_of(got) == f"LLM response: sampled<m{i}>"
        assert text_of(await c.call_tool("cl__slow", {"steps": 2})) == "done 2"


async def _post(http: httpx2.AsyncClient, url: str, body: dict[str, Any], headers: dict[str, str]) -> Any:
    resp = await http.post(url, json=body, headers=headers)
    if resp.headers.get("content-type", "").startswith("text/event-stream"):
        return json.loads(sse.Decoder().feed(resp.content)[-1].data)
    return resp.json() if resp.content else None


async def request_state_is_bound_to_its_principal(dep: Deployment, alice: str, bob: str) -> None:
    """Bob replays Alice's requestState (on whichever replica): unknown state; Alice's own retry works."""
    meta = {**modern_meta(), "io.modelcontextprotocol/clientCapabilities": {"sampling": {}}}
    call = {"name": "fxl__test_sampling", "arguments": {"prompt": "2+2?"}}
    url = f"{dep.lb}/mcp/keyed"
    headers = modern_headers("tools/call", "fxl__test_sampling")
    async with httpx2.AsyncClient(timeout=30) as http:
        for _ in range(len(dep.ports)):  # the retry lands on each replica in turn
            first = await _post(http, url, {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                                            "params": {**call, "_meta": meta}}, {**headers, "X-API-Key": alice})
            assert first["result"]["resultType"] == "input_required", first
            (ask,) = first["result"]["inputRequests"]
            retry = {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                     "params": {**call, "_meta": meta, "requestState": first["result"]["requestState"],
                                "inputResponses": {ask: {"role": "assistant", "model": "m",
                                                         "content": {"type": "text", "text": "four"}}}}}
            stolen = await _post(http, url, retry, {**headers, "X-API-Key": bob})
            assert "result" not in stolen and stolen["error"]["code"] == -32602, stolen
            mine = await _post(http, url, retry, {**headers, "X-API-Key": alice})
            assert "LLM response: four" in json.dumps(mine["result"]), mine


async def _trigger_until(c: Client, tool: str, args: dict[str, Any], arrived: asyncio.Event,
                         deadline: float = 20.0) -> int:
    attempts = 0
    with anyio.fail_after(deadline):
        while not arrived.is_set():
            attempts += 1
            await c.call_tool(tool, args)
            with anyio.move_on_after(1.5):
                await arrived.wait()
    return attempts


async def legacy_list_changed_and_subscriptions(dep: Deployment) -> None:
    """The GET stream is on one replica; the trigger, the subscribe and the touch land on the others."""
    changed, updated = asyncio.Event(), asyncio.Event()
    counts = {"changed": 0, "updated": 0}

    async def on_message(message: Any) -> None:
        if isinstance(message, ToolListChangedNotification):
            counts["changed"] += 1
            changed.set()
        elif isinstance(message, ResourceUpdatedNotification):
            counts["updated"] += 1
            updated.set()

    async with sdk_client(dep, "legacy", message_handler=on_message) as c:
        await _trigger_until(c, "fx__test_trigger_tool_change", {}, changed)
        await c.subscribe_resource(WATCHED)
        await _trigger_until(c, "cl__touch", {"uri": "test://watched"}, updated)
        # once more after the stream is surely up: one notification per change, not one per replica
        changed.clear()
        counts["changed"] = 0
        attempts = await _trigger_until(c, "fx__test_trigger_tool_change", {}, changed)
        updated.clear()
        await _trigger_until(c, "cl__touch", {"uri": "test://watched"}, updated)  # after any duplicate
        assert 1 <= counts["changed"] <= attempts, (counts, attempts)
        await c.unsubscribe_resource(WATCHED)
        counts["updated"] = 0
        changed.clear()
        await _trigger_until(c, "fx__test_trigger_tool_change", {}, changed)  # a later event on the stream
        await c.call_tool("cl__touch", {"uri": "test://watched"})
        changed.clear()
        await _trigger_until(c, "fx__test_trigger_tool_change", {}, changed)
        assert counts["updated"] == 0, "an unsubscribed URI was still delivered"


async def modern_listen_list_changed(dep: Deployment) -> None:
    arrived = asyncio.Event()
    async with sdk_client(dep, "2026-07-28") as c, c.listen(tools_list_changed=True) as sub:
        assert sub.honored.tools_list_changed

        async def consume() -> None:
            async for event in sub:
                if type(event).__name__ == "ToolsListChanged":
                    arrived.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(consume)
            await _trigger_until(c, "fx__test_trigger_tool_change", {}, arrived)
            tg.cancel_scope.cancel()


async def _open_session(http: httpx2.AsyncClient, dep: Deployment, vs: str = "open") -> str:
    resp = await http.post(f"{dep.lb}/mcp/{vs}", json=initialize_body(), headers=LEGACY_HEADERS)
    assert resp.status_code == 200, resp.text
    return resp.headers["mcp-session-id"]


def _legacy_headers(sid: str) -> dict[str, str]:
    return {**LEGACY_HEADERS, "Mcp-Session-Id": sid, "MCP-Protocol-Version": "2025-11-25"}


async def legacy_cancel_on_another_replica(dep: Deployment) -> None:
    """The call runs on replica 0; one notifications/cancelled sent to replica 1 stops it."""
    async with httpx2.AsyncClient(timeout=30) as http:
        sid = await _open_session(http, dep)
        headers = _legacy_headers(sid)
        body = {"jsonrpc": "2.0", "id": 77, "method": "tools/call",
                "params": {"name": "cl__slow", "arguments": {"steps": 400},  # 20 s unless cancelled
                           "_meta": {"progressToken": "p77"}}}
        cancel = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 77}}
        events: list[dict[str, Any]] = []
        cancelled = False
        decoder = sse.Decoder()
        async with asyncio.timeout(12), http.stream(
                "POST", f"{dep.url(0)}/mcp/open", json=body,
                headers={**headers, "Accept": "text/event-stream, application/json"}) as resp:
            async for chunk in resp.aiter_bytes():
                events += [json.loads(e.data) for e in decoder.feed(chunk) if e.data]
                if not cancelled and any(e.get("method") == "notifications/progress" for e in events):
                    cancelled = True  # the call is running on replica 0: cancel it through replica 1
                    sent = await http.post(f"{dep.url(1)}/mcp/open", json=cancel, headers=headers)
                    assert sent.status_code == 202, sent.text
        assert cancelled
        assert not any("result" in e for e in events), events[-3:]


async def delete_ends_the_session_on_every_replica(dep: Deployment) -> None:
    async with httpx2.AsyncClient(timeout=30) as http:
        sid = await _open_session(http, dep)
        ping = {"jsonrpc": "2.0", "id": 5, "method": "ping"}
        for _ in range(2 * len(dep.ports)):  # every replica has seen it live (and cached that)
            assert (await http.post(f"{dep.lb}/mcp/open", json=ping, headers=_legacy_headers(sid))).status_code == 200
        assert (await http.delete(f"{dep.lb}/mcp/open", headers=_legacy_headers(sid))).status_code == 200
        for _ in range(2 * len(dep.ports)):  # at once, on every replica: not after the cache expires
            resp = await http.post(f"{dep.lb}/mcp/open", json=ping, headers=_legacy_headers(sid))
            assert resp.status_code == 404, resp.text


async def a_session_cannot_be_deleted_by_another_principal(dep: Deployment, alice: str, bob: str) -> None:
    async with httpx2.AsyncClient(timeout=30) as http:
        resp = await http.post(f"{dep.lb}/mcp/keyed", json=initialize_body(),
                               headers={**LEGACY_HEADERS, "X-API-Key": alice})
        sid = resp.headers["mcp-session-id"]
        for _ in range(len(dep.ports)):
            gone = await http.delete(f"{dep.lb}/mcp/keyed", headers={**_legacy_headers(sid), "X-API-Key": bob})
            assert gone.status_code == 404
        ping = {"jsonrpc": "2.0", "id": 5, "method": "ping"}
        for _ in range(len(dep.ports)):
            ok = await http.post(f"{dep.lb}/mcp/keyed", json=ping, headers={**_legacy_headers(sid), "X-API-Key": alice})
            assert ok.status_code == 200, ok.text


async def active_sessions_are_counted_across_replicas(dep: Deployment) -> None:
    """Sessions opened through the balancer count on every replica's gauge (the cluster-wide number)."""
    async with httpx2.AsyncClient(timeout=30) as http:
        floor = len(dep.ports) + 1
        for _ in range(floor):
            await _open_session(http, dep)
        async with asyncio.timeout(15):
            while True:
                seen = [await metric(http, dep.url(i), "stile_sessions_active") for i in range(len(dep.ports))]
                if all(v is not None and v >= floor for v in seen) and len(set(seen)) == 1:
                    return
                await asyncio.sleep(0.2)


async def revoked_key_is_refused_everywhere(dep: Deployment, key: str, revoke: Any) -> None:
    """After `stile keys revoke --config`, every replica refuses the key at once, though each had it cached as
    verified (`auth.key_cache_seconds: 30` here): the CLI announced the revocation on the bus."""
    ping = {"jsonrpc": "2.0", "id": 5, "method": "tools/list", "params": {"_meta": modern_meta()}}
    headers = {**modern_headers("tools/list"), "X-API-Key": key}
    async with httpx2.AsyncClient(timeout=30) as http:
        for _ in range(len(dep.ports)):
            resp = await http.post(f"{dep.lb}/mcp/keyed", json=ping, headers=headers)
            assert resp.status_code == 200, resp.text
        await asyncio.to_thread(revoke)  # `stile keys revoke` (its own event loop)
        for _ in range(2 * len(dep.ports)):
            resp = await http.post(f"{dep.lb}/mcp/keyed", json=ping, headers=headers)
            assert resp.status_code == 401, resp.text
