"""All four era combinations through Stile: legacy/modern client x legacy/modern upstream.

Upstreams: `@modelcontextprotocol/server-everything` (TypeScript SDK, legacy-only) and the conformance
fixture (python SDK). The fixture is registered twice: `fx` (era auto: dual-era, so legacy clients get a
legacy upstream session) and `fxm` (era: modern, so Stile must bridge legacy clients to 2026-07-28).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import anyio
import pytest
from mcp import Client
from mcp.types import (
    BlobResourceContents,
    CreateMessageRequestParams,
    CreateMessageResult,
    ElicitRequestParams,
    ElicitResult,
    PromptReference,
    ResourceTemplateReference,
    TextContent,
    TextResourceContents,
    ToolListChangedNotification,
)

from stile.wire import sse
from tests.e2e.helpers import EVERYTHING_JS, everything_upstream, modern_headers, modern_meta
from tests.fixtures import fixture_server
from tests.support import stile_server

CLIENTS = ["legacy", "2026-07-28"]
EVERYTHING_DOCS = EVERYTHING_JS.parent / "docs"


@dataclass(frozen=True)
class Case:
    view: str
    tool: tuple[str, dict[str, Any], str]
    resource: tuple[str, str]
    template: tuple[str, str, str]
    prompt: tuple[str, dict[str, str], str]
    sampling_tool: tuple[str, dict[str, Any]]


UPSTREAMS: dict[str, Case] = {
    "legacy-upstream": Case(
        view="ev",
        tool=("ev__get-sum", {"a": 2, "b": 40}, "The sum of 2 and 40 is 42."),
        resource=("ev+demo://resource/static/document/architecture.md",
                  (EVERYTHING_DOCS / "architecture.md").read_text(encoding="utf-8")
                  if EVERYTHING_DOCS.exists() else "<server-everything not installed>"),
        template=("ev+demo://resource/dynamic/text/{resourceId}", "ev+demo://resource/dynamic/text/7",
                  "Resource 7: This is a plaintext resource"),
        prompt=("ev__args-prompt", {"city": "Paris", "state": "TX"}, "What's weather in Paris, TX?"),
        sampling_tool=("ev__trigger-sampling-request", {"prompt": "ping?"}),
    ),
    "modern-upstream": Case(
        view="fxm",
        tool=("fxm__test_simple_text", {}, "This is a simple text response for testing."),
        resource=("fxm+test://static-text", "This is the content of the static text resource."),
        template=("fxm+test://template/{id}/data", "fxm+test://template/42/data", '{"id": "42"'),
        prompt=("fxm__test_prompt_with_arguments", {"arg1": "a", "arg2": "b"},
                "Prompt with arguments: arg1='a', arg2='b'"),
        sampling_tool=("fxm__test_input_required_result_sampling", {}),
    ),
}


@pytest.fixture(scope="module")
def base() -> Iterator[str]:
    with everything_upstream() as ev, fixture_server() as fx:
        config = {
            "upstreams": {"ev": {"url": ev}, "fx": {"url": fx}, "fxm": {"url": fx, "era": "modern"}},
            "virtual_servers": {name: {"upstreams": [name], "auth": "none"} for name in ("ev", "fx", "fxm")},
        }
        with stile_server(config) as url:
            yield url


@pytest.fixture(params=CLIENTS)
def client_mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=list(UPSTREAMS))
def case(request: pytest.FixtureRequest) -> Case:
    return UPSTREAMS[request.param]


async def on_sampling(ctx: Any, params: CreateMessageRequestParams) -> CreateMessageResult:
    asked = params.messages[0].content
    text = asked.text if isinstance(asked, TextContent) else "?"
    return CreateMessageResult(role="assistant", model="test-model",
                               content=TextContent(type="text", text=f"sampled<{text}>"))


async def on_elicitation(ctx: Any, params: ElicitRequestParams) -> ElicitResult:
    schema = getattr(params, "requested_schema", None) or {}
    content: dict[str, str | int | float | bool | list[str] | None] = {
        str(k): "Ada" if k in ("name", "username") else "ada@example.com" for k in schema.get("properties", {})
    }
    return ElicitResult(action="accept", content=content)


def text_of(result: Any) -> str:
    block = result.content[0]
    assert isinstance(block, TextContent)
    return block.text


def client(base: str, view: str, mode: str, **kw: Any) -> Client:
    return Client(f"{base}/mcp/{view}", mode=mode, sampling_callback=on_sampling,  # type: ignore[arg-type]
                  elicitation_callback=on_elicitation, **kw)  # type: ignore[arg-type]


# --- tools, resources, prompts in every combination ----------------------------------------------------


async def test_tools_list_and_call_work_in_every_era_combination(base: str, client_mode: str, case: Case) -> None:
    name, args, expected = case.tool
    async with client(base, case.view, client_mode) as c:
        names = [t.name for t in (await c.list_tools()).tools]
        result = await c.call_tool(name, args)
    assert name in names
    assert all(n.startswith(f"{case.view}__") for n in names)
    assert not result.is_error
    assert text_of(result) == expected


async def test_resources_list_and_read_work_in_every_era_combination(base: str, client_mode: str, case: Case) -> None:
    uri, expected = case.resource
    async with client(base, case.view, client_mode) as c:
        uris = [r.uri for r in (await c.list_resources()).resources]
        read = await c.read_resource(uri)
    assert uri in uris
    (content,) = read.contents
    assert isinstance(content, TextResourceContents)
    assert (content.uri, content.text) == (uri, expected)


async def test_resource_templates_expand_and_read_in_every_era_combination(
    base: str, client_mode: str, case: Case
) -> None:
    template, uri, expected_start = case.template
    async with client(base, case.view, client_mode) as c:
        templates = [t.uri_template for t in (await c.list_resource_templates()).resource_templates]
        read = await c.read_resource(uri)
    assert template in templates
    (content,) = read.contents
    assert isinstance(content, TextResourceContents)
    assert content.uri == uri
    assert content.text.startswith(expected_start)


async def test_prompts_list_and_get_work_in_every_era_combination(base: str, client_mode: str, case: Case) -> None:
    name, args, expected = case.prompt
    async with client(base, case.view, client_mode) as c:
        names = [p.name for p in (await c.list_prompts()).prompts]
        got = await c.get_prompt(name, args)
    assert name in names
    content = got.messages[0].content
    assert isinstance(content, TextContent)
    assert content.text == expected


async def test_server_to_client_sampling_is_relayed_in_every_era_combination(
    base: str, client_mode: str, case: Case
) -> None:
    name, args = case.sampling_tool
    async with client(base, case.view, client_mode) as c:
        result = await c.call_tool(name, args)
    assert not result.is_error, text_of(result)
    assert "sampled<" in text_of(result)


async def test_a_binary_resource_keeps_its_bytes_in_every_client_era(base: str, client_mode: str) -> None:
    async with client(base, "fxm", client_mode) as c:
        read = await c.read_resource("fxm+test://static-binary")
    (content,) = read.contents
    assert isinstance(content, BlobResourceContents)
    assert content.mime_type == "image/png"
    assert content.blob.startswith("iVBORw0KGgo")  # base64 of the PNG signature


async def test_completion_is_routed_to_the_prompts_upstream_under_its_original_name(
    base: str, client_mode: str
) -> None:
    async with client(base, "ev", client_mode) as c:
        got = await c.complete(PromptReference(type="ref/prompt", name="ev__completable-prompt"),
                               {"name": "department", "value": "S"})
        narrowed = await c.complete(PromptReference(type="ref/prompt", name="ev__completable-prompt"),
                                    {"name": "name", "value": ""}, context_arguments={"department": "Sales"})
    assert got.completion.values == ["Sales", "Support"]
    assert narrowed.completion.values == ["David", "Eve", "Frank"]


async def test_completion_for_a_resource_template_is_routed_by_its_prefixed_uri(base: str, client_mode: str) -> None:
    async with client(base, "fxm", client_mode) as c:
        got = await c.complete(ResourceTemplateReference(type="ref/resource", uri="fxm+test://template/{id}/data"),
                               {"name": "id", "value": "4"})
    assert got.completion.values == []


# --- server -> client requests for legacy clients ------------------------------------------------------


async def test_a_legacy_client_answers_sampling_relayed_from_a_legacy_upstream_session(base: str) -> None:
    async with client(base, "fx", "legacy") as c:
        result = await c.call_tool("fx__test_sampling", {"prompt": "What is 2+2?"})
    assert text_of(result) == "LLM response: sampled<What is 2+2?>"


async def test_a_legacy_client_answers_elicitation_relayed_from_a_legacy_upstream_session(base: str) -> None:
    async with client(base, "fx", "legacy") as c:
        result = await c.call_tool("fx__test_elicitation", {"message": "Who are you?"})
    assert text_of(result).startswith("User response: action=accept, content=")
    assert json.loads(text_of(result).split("content=", 1)[1]) == {"username": "Ada", "email": "ada@example.com"}


async def test_a_legacy_client_answers_input_required_of_a_modern_upstream_as_relayed_requests(base: str) -> None:
    async with client(base, "fxm", "legacy") as c:
        elicited = await c.call_tool("fxm__test_input_required_result_elicitation", {})
        several = await c.call_tool("fxm__test_input_required_result_multi_round", {})
    assert text_of(elicited) == "Hello, Ada!"
    assert not several.is_error, text_of(several)


async def test_a_legacy_client_without_sampling_gets_the_upstreams_not_supported_answer(base: str) -> None:
    async with Client(f"{base}/mcp/fx", mode="legacy") as c:
        result = await c.call_tool("fx__test_sampling", {"prompt": "x"})
    assert text_of(result).startswith("Sampling not supported or error:")


# --- list_changed reaches subscribed clients -----------------------------------------------------------


async def trigger_until(c: Client, tool: str, arrived: asyncio.Event, deadline: float = 15.0) -> int:
    """Trigger a list change until the notification arrives (the stream may still be connecting)."""
    attempts = 0
    with anyio.fail_after(deadline):
        while not arrived.is_set():
            attempts += 1
            await c.call_tool(tool, {})
            with anyio.move_on_after(1.0):
                await arrived.wait()
    return attempts


@pytest.mark.parametrize("view", ["fx", "fxm"])
async def test_tools_list_changed_reaches_a_legacy_clients_get_stream(base: str, view: str) -> None:
    arrived = asyncio.Event()

    async def on_message(message: Any) -> None:
        if isinstance(message, ToolListChangedNotification):
            arrived.set()

    async with Client(f"{base}/mcp/{view}", mode="legacy", message_handler=on_message) as c:
        await trigger_until(c, f"{view}__test_trigger_tool_change", arrived)


@pytest.mark.parametrize("view", ["fx", "fxm"])
async def test_tools_list_changed_reaches_a_modern_clients_listen_stream(base: str, view: str) -> None:
    arrived = asyncio.Event()
    async with Client(f"{base}/mcp/{view}", mode="2026-07-28") as c, c.listen(tools_list_changed=True) as sub:
        assert sub.honored.tools_list_changed

        async def consume() -> None:
            async for event in sub:
                if type(event).__name__ == "ToolsListChanged":
                    arrived.set()
                    return

        async with anyio.create_task_group() as tg:
            tg.start_soon(consume)
            await trigger_until(c, f"{view}__test_trigger_tool_change", arrived)
            tg.cancel_scope.cancel()


async def test_a_listen_stream_is_not_sent_notification_types_it_did_not_ask_for(base: str) -> None:
    # Raw HTTP: the SDK client would drop unrequested types itself and hide the gateway's behaviour.
    body = {"jsonrpc": "2.0", "id": "listen-1", "method": "subscriptions/listen",
            "params": {"notifications": {"promptsListChanged": True}, "_meta": modern_meta()}}
    seen: list[dict[str, Any]] = []
    prompts_changed = asyncio.Event()

    async def read_stream(resp: aiohttp.ClientResponse) -> None:
        decoder = sse.Decoder()
        async for chunk in resp.content.iter_any():
            for event in decoder.feed(chunk):
                msg = json.loads(event.data)
                seen.append(msg)
                if msg.get("method") == "notifications/prompts/list_changed":
                    prompts_changed.set()
                    return

    async with aiohttp.ClientSession() as http, http.post(
        f"{base}/mcp/fx", json=body, headers=modern_headers("subscriptions/listen")
    ) as resp, client(base, "fx", "2026-07-28") as c:
        assert resp.status == 200
        async with anyio.create_task_group() as tg:
            tg.start_soon(read_stream, resp)
            await c.call_tool("fx__test_trigger_tool_change", {})
            await trigger_until(c, "fx__test_trigger_prompt_change", prompts_changed)
    methods = [m.get("method") for m in seen]
    assert methods[0] == "notifications/subscriptions/acknowledged"
    assert seen[0]["params"]["notifications"] == {"promptsListChanged": True}
    assert "notifications/tools/list_changed" not in methods
    assert all(m["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"] == "listen-1" for m in seen)
