"""Stile in front of two real upstreams (notes over HTTP, files over stdio), used by the official SDK client.

Every client-facing behaviour runs in both protocol eras (legacy 2025-11-25 session, modern 2026-07-28).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError
from mcp.types import TextContent, TextResourceContents

from stile.wire import sse
from tests.e2e.helpers import counting_upstream, modern_headers, modern_meta, upstream_counts
from tests.support import REPO, files_upstream_config, notes_upstream, stile_server

MODES = ["legacy", "2026-07-28"]
SECRET_VAR = "STILE_TEST_PARENT_SECRET"

CONFIG_VIEWS: dict[str, Any] = {
    "all": {"upstreams": ["notes", "files"], "auth": "none"},
    "curated": {
        "auth": "none",
        "allow_tools": ["notes.list_notes", "notes.get_note", "files.read_*", "files.list_files"],
        "deny_tools": ["files.read_env"],
        "tools": {"notes.list_notes": {"name": "notes", "description": "All notes, by id and title"},
                  "files.read_file": {"description": "Read one file under the examples folder"}},
    },
    "counted": {"upstreams": ["count"], "auth": "none"},
}


@pytest.fixture(scope="module")
def gateway() -> Iterator[tuple[str, str]]:
    """(Stile base URL, counting upstream base URL); one Stile for the whole module."""
    with notes_upstream() as notes, counting_upstream() as count:
        config = {
            "upstreams": {"notes": {"url": notes}, "files": files_upstream_config(), "count": {"url": f"{count}/mcp"}},
            "virtual_servers": CONFIG_VIEWS,
        }
        with stile_server(config, env={SECRET_VAR: "parent-only-value"}) as base:
            yield base, count


@pytest.fixture(scope="module")
def base(gateway: tuple[str, str]) -> str:
    return gateway[0]


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def text_of(result: Any) -> str:
    block = result.content[0]
    assert isinstance(block, TextContent)
    return block.text


# --- discovery --------------------------------------------------------------------------------------


async def test_tools_list_shows_every_upstream_tool_name_spaced(base: str, mode: str) -> None:
    async with Client(f"{base}/mcp/all", mode=mode) as c:
        tools = {t.name: t for t in (await c.list_tools()).tools}
    assert set(tools) == {
        "notes__list_notes", "notes__get_note", "notes__add_note", "notes__delete_note", "notes__count_slowly",
        "files__list_files", "files__read_file", "files__read_env",
    }
    assert tools["notes__get_note"].input_schema["properties"]["note_id"]["type"] == "integer"
    assert tools["files__read_file"].annotations is not None and tools["files__read_file"].annotations.read_only_hint


async def test_tools_list_order_is_the_same_for_every_client_and_era(base: str) -> None:
    orders = []
    for mode in MODES * 2:
        async with Client(f"{base}/mcp/all", mode=mode) as c:
            orders.append([t.name for t in (await c.list_tools()).tools])
    assert all(o == orders[0] for o in orders)


# --- calls --------------------------------------------------------------------------------------------


async def test_tools_call_reaches_the_http_upstream(base: str, mode: str) -> None:
    async with Client(f"{base}/mcp/all", mode=mode) as c:
        result = await c.call_tool("notes__get_note", {"note_id": 1})
    assert not result.is_error
    assert text_of(result) == "Stile fronts this server."
    assert result.structured_content == {"result": "Stile fronts this server."}


async def test_tools_call_reaches_the_stdio_upstream(base: str, mode: str) -> None:
    async with Client(f"{base}/mcp/all", mode=mode) as c:
        listed = await c.call_tool("files__list_files", {})
        readme = await c.call_tool("files__read_file", {"path": "demo.yaml"})
    assert "demo.yaml" in (listed.structured_content or {})["result"]
    assert text_of(readme) == (REPO / "examples" / "demo.yaml").read_text(encoding="utf-8")


async def test_an_upstream_tool_error_comes_back_as_an_is_error_result(base: str, mode: str) -> None:
    async with Client(f"{base}/mcp/all", mode=mode) as c:
        result = await c.call_tool("notes__get_note", {"note_id": 999})
    assert result.is_error
    assert text_of(result) == "Error executing tool get_note"  # the upstream SDK hides the message


async def test_the_stdio_child_does_not_inherit_the_gateways_environment(base: str, mode: str) -> None:
    assert "HOME" in os.environ
    async with Client(f"{base}/mcp/all", mode=mode) as c:
        secret = await c.call_tool("files__read_env", {"name": SECRET_VAR})
        home = await c.call_tool("files__read_env", {"name": "HOME"})
        configured = await c.call_tool("files__read_env", {"name": "FILES_ROOT"})
    assert text_of(secret) == "<unset>"
    assert text_of(home) == "<unset>"
    assert text_of(configured) == str(REPO / "examples"), "variables set under `env:` must reach the child"


# --- resources and prompts -------------------------------------------------------------------------------


async def test_resources_list_shows_prefixed_uris_that_read_back(base: str, mode: str) -> None:
    async with Client(f"{base}/mcp/all", mode=mode) as c:
        uris = sorted(r.uri for r in (await c.list_resources()).resources)
        index = await c.read_resource("notes+notes://index")
        readme = await c.read_resource("files+file:///readme")
    assert uris == ["files+file:///readme", "notes+notes://index"]
    (content,) = index.contents
    assert isinstance(content, TextResourceContents)
    assert content.uri == "notes+notes://index" and content.text.startswith("welcome")
    (content,) = readme.contents
    assert isinstance(content, TextResourceContents)
    assert content.uri == "files+file:///readme"
    assert content.text == "Files served over stdio through Stile."


async def test_resource_templates_are_prefixed_and_an_expanded_uri_reads_through(base: str, mode: str) -> None:
    async with Client(f"{base}/mcp/all", mode=mode) as c:
        templates = [t.uri_template for t in (await c.list_resource_templates()).resource_templates]
        note = await c.read_resource("notes+notes://note/1")
    assert templates == ["notes+notes://note/{note_id}"]
    (content,) = note.contents
    assert isinstance(content, TextResourceContents)
    assert (content.uri, content.text) == ("notes+notes://note/1", "Stile fronts this server.")


async def test_reading_an_unprefixed_or_foreign_uri_is_resource_not_found(base: str, mode: str) -> None:
    async with Client(f"{base}/mcp/all", mode=mode) as c:
        for uri in ("notes://index", "crm+x://1"):
            with pytest.raises(MCPError) as info:
                await c.read_resource(uri)
            assert info.value.error.code == (-32002 if mode == "legacy" else -32602)
            assert uri in info.value.error.message


async def test_prompts_list_and_get_go_through_the_prefixed_name(base: str, mode: str) -> None:
    async with Client(f"{base}/mcp/all", mode=mode) as c:
        prompts = {p.name: p for p in (await c.list_prompts()).prompts}
        got = await c.get_prompt("notes__summarize", {"style": "bullet"})
    assert list(prompts) == ["notes__summarize"]
    assert [a.name for a in prompts["notes__summarize"].arguments or []] == ["style"]
    content = got.messages[0].content
    assert isinstance(content, TextContent)
    assert content.text.startswith("Summarize these notes in a bullet style")


async def test_an_unknown_prompt_is_invalid_params(base: str, mode: str) -> None:
    async with Client(f"{base}/mcp/all", mode=mode) as c:
        with pytest.raises(MCPError) as info:
            await c.get_prompt("notes__nope")
    assert info.value.error.code == -32602


# --- progress ---------------------------------------------------------------------------------------


async def test_progress_notifications_reach_the_callback_of_the_calling_client(base: str, mode: str) -> None:
    seen: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total, message))

    async with Client(f"{base}/mcp/all", mode=mode) as c:
        result = await c.call_tool("notes__count_slowly", {"n": 4}, progress_callback=on_progress)
    assert text_of(result) == "counted to 4"
    assert seen == [(float(i), 4.0, f"step {i}") for i in range(1, 5)]


async def test_progress_events_carry_the_clients_own_token_on_the_wire(base: str) -> None:
    body = {"jsonrpc": "2.0", "id": "p-1", "method": "tools/call",
            "params": {"name": "notes__count_slowly", "arguments": {"n": 3},
                       "_meta": {**modern_meta(), "progressToken": "client-token-7"}}}
    async with aiohttp.ClientSession() as http, http.post(
        f"{base}/mcp/all", json=body, headers=modern_headers("tools/call", "notes__count_slowly")
    ) as resp:
        assert resp.status == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        events = sse.Decoder().feed(await resp.read())
    msgs = [json.loads(e.data) for e in events]
    progress = [m["params"] for m in msgs if m.get("method") == "notifications/progress"]
    assert [p["progressToken"] for p in progress] == ["client-token-7"] * 3
    assert [p["progress"] for p in progress] == [1, 2, 3]
    assert msgs[-1]["id"] == "p-1" and msgs[-1]["result"]["content"][0]["text"] == "counted to 3"


# --- curated view -------------------------------------------------------------------------------------


async def test_allow_deny_rename_and_description_override_shape_the_curated_list(base: str, mode: str) -> None:
    async with Client(f"{base}/mcp/curated", mode=mode) as c:
        tools = {t.name: t for t in (await c.list_tools()).tools}
    assert set(tools) == {"notes", "notes__get_note", "files__read_file", "files__list_files"}
    assert tools["notes"].description == "All notes, by id and title"
    assert tools["files__read_file"].description == "Read one file under the examples folder"
    assert tools["notes__get_note"].description == "Return the text of one note."


async def test_a_renamed_tool_is_called_by_its_new_name(base: str, mode: str) -> None:
    async with Client(f"{base}/mcp/curated", mode=mode) as c:
        result = await c.call_tool("notes", {})
    assert (result.structured_content or {})["result"][0] == {"id": 1, "title": "welcome"}


async def test_a_hidden_tool_is_refused_exactly_like_an_unknown_tool(base: str, mode: str) -> None:
    errors: dict[str, tuple[int, str, Any]] = {}
    async with Client(f"{base}/mcp/curated", mode=mode) as c:
        for name in ("files__read_env", "notes__list_notes", "notes__add_note", "files__no_such_tool"):
            with pytest.raises(MCPError) as info:
                await c.call_tool(name, {"name": "HOME"})
            err = info.value.error
            errors[name] = (err.code, err.message.replace(name, "<name>"), err.data)
    assert errors["files__no_such_tool"][0] == -32602
    assert len(set(errors.values())) == 1, errors


async def test_a_hidden_tool_and_an_unknown_tool_get_identical_http_answers(base: str) -> None:
    answers = []
    async with aiohttp.ClientSession() as http:
        for name in ("files__read_env", "files__no_such_tool"):
            body = {"jsonrpc": "2.0", "id": 9, "method": "tools/call",
                    "params": {"name": name, "arguments": {"name": "HOME"}, "_meta": modern_meta()}}
            async with http.post(f"{base}/mcp/curated", json=body, headers=modern_headers("tools/call", name)) as r:
                text = (await r.read()).decode().replace(name, "<name>")
                answers.append((r.status, r.headers.get("content-type"), text))
    assert answers[0] == answers[1]


# --- upstream sessions are reused --------------------------------------------------------------------


async def test_many_calls_from_many_clients_reuse_one_upstream_session(gateway: tuple[str, str]) -> None:
    base, count = gateway
    before = await upstream_counts(count)
    async with Client(f"{base}/mcp/counted", mode="legacy") as c:
        for i in range(20):
            assert text_of(await c.call_tool("count__echo", {"text": f"one-{i}"})) == f"one-{i}"
        for _ in range(5):
            await c.list_tools()
    for mode in ("legacy", "legacy", "legacy", "2026-07-28", "2026-07-28", "2026-07-28"):
        async with Client(f"{base}/mcp/counted", mode=mode) as c:
            for i in range(3):
                assert text_of(await c.call_tool("count__echo", {"text": f"{mode}-{i}"})) == f"{mode}-{i}"
    after = await upstream_counts(count)
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    assert delta["tools/call"] == 20 + 6 * 3, "every call must reach the upstream"
    assert after.get("initialize", 0) <= 2, f"upstream initialized per call or per client: {after}"
    assert after.get("server/discover", 0) <= 2, f"upstream re-discovered per call: {after}"
    assert delta.get("tools/list", 0) == 0, "client lists must be answered from the catalog"
