"""Hostile and broken input against a running Stile over raw HTTP, and upstreams that fail or stall."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError
from mcp.types import TextContent

from tests.e2e.helpers import LEGACY_HEADERS, counting_upstream, initialize_body, modern_headers, modern_meta
from tests.support import free_port, notes_upstream, stile_server

MAX_BODY = 4096
MODES = ["legacy", "2026-07-28"]


@dataclass
class Env:
    base: str
    stack: ExitStack  # owns the `doomed` upstream, so one test can stop it while Stile keeps running


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    with ExitStack() as outer:
        notes = outer.enter_context(notes_upstream())
        slow = outer.enter_context(counting_upstream())
        doomed_stack = outer.enter_context(ExitStack())
        doomed = doomed_stack.enter_context(counting_upstream())
        config = {
            "upstreams": {"notes": {"url": notes}, "slow": {"url": f"{slow}/mcp", "timeout": 1},
                          "doomed": {"url": f"{doomed}/mcp", "timeout": 5, "connect_timeout": 2}},
            "virtual_servers": {"main": {"auth": "none"}},
            "limits": {"max_body_bytes": MAX_BODY},
        }
        base = outer.enter_context(stile_server(config))
        yield Env(base, doomed_stack)


@pytest.fixture(scope="module")
def base(env: Env) -> str:
    return env.base


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def error(self) -> dict[str, Any]:
        err: dict[str, Any] = self.json()["error"]
        return err


async def post(http: aiohttp.ClientSession, url: str, body: bytes | dict[str, Any] | list[Any],
               headers: dict[str, str] | None = None) -> Answer:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with http.post(url, data=data, headers={**LEGACY_HEADERS, **(headers or {})}) as resp:
        answer = Answer(resp.status, {k.lower(): v for k, v in resp.headers.items()}, await resp.read())
    assert b"Traceback" not in answer.body and b'File "' not in answer.body, answer.body
    return answer


async def legacy_session(http: aiohttp.ClientSession, url: str, version: str = "2025-11-25") -> str:
    body = initialize_body()
    body["params"]["protocolVersion"] = version
    answer = await post(http, url, body)
    assert answer.status == 200
    sid = answer.headers["mcp-session-id"]
    await post(http, url, {"jsonrpc": "2.0", "method": "notifications/initialized"},
               {"Mcp-Session-Id": sid, "MCP-Protocol-Version": version})
    return sid


def modern(method: str, params: dict[str, Any] | None = None, rid: Any = 1) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": rid, "method": method, "params": {**(params or {}), "_meta": modern_meta()}}


# --- malformed bodies -----------------------------------------------------------------------------------


@pytest.mark.parametrize("body", [b"{not json", b"", b'{"jsonrpc":"2.0","id":1,"method":"tools/list"',
                                  b"\xff\xfe\x00garbage", b'{"jsonrpc":"2.0","id":1,"method":NaN}'])
async def test_invalid_json_is_400_parse_error_without_internals(
    base: str, http: aiohttp.ClientSession, body: bytes
) -> None:
    answer = await post(http, f"{base}/mcp/main", body)
    assert answer.status == 400
    assert answer.headers["content-type"].startswith("application/json")
    assert answer.json() == {"jsonrpc": "2.0", "id": None,
                             "error": {"code": -32700, "message": answer.error()["message"]}}
    assert "line" not in answer.error()["message"], "parser positions leak the body's shape"


async def test_duplicate_keys_are_400_parse_error(base: str, http: aiohttp.ClientSession) -> None:
    answer = await post(http, f"{base}/mcp/main",
                        b'{"jsonrpc":"2.0","id":1,"method":"tools/list","method":"tools/call"}')
    assert answer.status == 400
    assert answer.error()["code"] == -32700
    assert "duplicate key 'method'" in answer.error()["message"]


async def test_a_hundred_levels_of_nesting_are_refused_with_400(base: str, http: aiohttp.ClientSession) -> None:
    deep = b'{"a":' * 99 + b"1" + b"}" * 99
    body = b'{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"x":' + deep + b"}}"
    answer = await post(http, f"{base}/mcp/main", body)
    assert answer.status == 400
    assert answer.error()["code"] == -32700
    assert "nested" in answer.error()["message"]


@pytest.mark.parametrize("body", [
    b'{"jsonrpc":"2.0","id":18446744073709551616,"method":"tools/list"}',
    b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"notes__get_note","arguments":{"x":"\\ud800"}}}',
])
async def test_json_the_gateway_could_not_re_encode_is_refused_as_a_parse_error(
    base: str, http: aiohttp.ClientSession, body: bytes
) -> None:
    sid = await legacy_session(http, f"{base}/mcp/main")
    answer = await post(http, f"{base}/mcp/main", body, {"Mcp-Session-Id": sid})
    assert answer.status == 400
    assert answer.error()["code"] == -32700


async def test_a_body_over_max_body_bytes_is_413(base: str, http: aiohttp.ClientSession) -> None:
    padding = "x" * (MAX_BODY + 1)
    answer = await post(http, f"{base}/mcp/main", modern("tools/list", {"pad": padding}), modern_headers("tools/list"))
    assert answer.status == 413
    assert answer.error()["code"] == -32600


async def test_a_chunked_body_over_the_limit_is_413_even_without_content_length(
    base: str, http: aiohttp.ClientSession
) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"pad":"'
        for _ in range(MAX_BODY // 512 + 2):
            yield b"y" * 512
        yield b'"}}'

    async with http.post(f"{base}/mcp/main", data=chunks(), headers=LEGACY_HEADERS) as resp:
        assert "content-length" not in {k.lower() for k in resp.request_info.headers}
        assert resp.status == 413


async def test_a_body_just_under_the_limit_is_accepted(base: str, http: aiohttp.ClientSession) -> None:
    body = modern("tools/list", {"pad": ""})
    overhead = len(json.dumps(body))
    body["params"]["pad"] = "z" * (MAX_BODY - overhead - 10)
    answer = await post(http, f"{base}/mcp/main", body, modern_headers("tools/list"))
    assert answer.status == 200, answer.body


@pytest.mark.parametrize("with_session", [False, True])
async def test_a_batch_array_is_400_outside_2025_03_26_sessions(
    base: str, http: aiohttp.ClientSession, with_session: bool
) -> None:
    headers = {"Mcp-Session-Id": await legacy_session(http, f"{base}/mcp/main")} if with_session else {}
    batch = [{"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, {"jsonrpc": "2.0", "id": 2, "method": "ping"}]
    answer = await post(http, f"{base}/mcp/main", batch, headers)
    assert answer.status == 400
    assert answer.error()["code"] == -32600


@pytest.mark.parametrize("body", [[], "tools/list", 42, None, {"id": 1, "method": "tools/list"}])
async def test_a_body_that_is_not_one_json_rpc_message_is_400_invalid_request(
    base: str, http: aiohttp.ClientSession, body: Any
) -> None:
    answer = await post(http, f"{base}/mcp/main", json.dumps(body).encode(), modern_headers("tools/list"))
    assert answer.status == 400
    assert answer.error()["code"] == -32600


# --- routing and DNS-rebinding defences -----------------------------------------------------------------


@pytest.mark.parametrize("path", ["/mcp/nope", "/mcp/", "/mcp", "/mcp/main/extra", "/elsewhere", "/sse/nope"])
async def test_an_unknown_virtual_server_or_path_is_404(base: str, http: aiohttp.ClientSession, path: str) -> None:
    answer = await post(http, f"{base}{path}", modern("tools/list"), modern_headers("tools/list"))
    assert answer.status == 404
    assert "virtual servers: /mcp/main" in answer.error()["message"]  # the valid names, to fix a typo


@pytest.mark.parametrize("origin", ["http://evil.example", "https://127.0.0.1.evil.example", "null"])
async def test_a_foreign_origin_is_403(base: str, http: aiohttp.ClientSession, origin: str) -> None:
    answer = await post(http, f"{base}/mcp/main", modern("tools/list"), {**modern_headers("tools/list"),
                                                                        "Origin": origin})
    assert answer.status == 403


async def test_a_loopback_origin_is_accepted(base: str, http: aiohttp.ClientSession) -> None:
    answer = await post(http, f"{base}/mcp/main", modern("tools/list"),
                        {**modern_headers("tools/list"), "Origin": "http://localhost:5173"})
    assert answer.status == 200


@pytest.mark.parametrize("host", ["evil.example", "evil.example:80", "127.0.0.1.nip.io"])
async def test_a_host_header_not_naming_this_server_is_421(base: str, http: aiohttp.ClientSession, host: str) -> None:
    answer = await post(http, f"{base}/mcp/main", modern("tools/list"), {**modern_headers("tools/list"), "Host": host})
    assert answer.status == 421


async def test_health_endpoints_need_no_mcp_headers(base: str, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{base}/healthz") as resp:
        assert resp.status == 200
        assert await resp.json() == {"status": "ok"}


# --- modern (2026-07-28) protocol errors ---------------------------------------------------------------


async def test_a_modern_request_whose_mcp_method_header_disagrees_is_400_header_mismatch(
    base: str, http: aiohttp.ClientSession
) -> None:
    answer = await post(http, f"{base}/mcp/main", modern("tools/list"), modern_headers("prompts/list"))
    assert answer.status == 400
    assert answer.error()["code"] == -32020


async def test_a_modern_tools_call_without_mcp_name_is_400_header_mismatch(
    base: str, http: aiohttp.ClientSession
) -> None:
    body = modern("tools/call", {"name": "notes__list_notes", "arguments": {}})
    answer = await post(http, f"{base}/mcp/main", body, modern_headers("tools/call"))
    assert answer.status == 400
    assert answer.error()["code"] == -32020


async def test_an_unsupported_protocol_version_is_400_with_the_supported_list(
    base: str, http: aiohttp.ClientSession
) -> None:
    body = modern("tools/list")
    body["params"]["_meta"]["io.modelcontextprotocol/protocolVersion"] = "1900-01-01"
    answer = await post(http, f"{base}/mcp/main", body, {**modern_headers("tools/list"),
                                                        "MCP-Protocol-Version": "1900-01-01"})
    assert answer.status == 400
    err = answer.error()
    assert err["code"] == -32022
    assert err["data"] == {"supported": ["2026-07-28"], "requested": "1900-01-01"}
    assert answer.json()["id"] == 1


async def test_a_modern_request_missing_client_capabilities_is_400_invalid_params(
    base: str, http: aiohttp.ClientSession
) -> None:
    body = modern("tools/list")
    del body["params"]["_meta"]["io.modelcontextprotocol/clientCapabilities"]
    answer = await post(http, f"{base}/mcp/main", body, modern_headers("tools/list"))
    assert answer.status == 400
    assert answer.error()["code"] == -32602


@pytest.mark.parametrize("method", ["no/such_method", "initialize", "ping", "logging/setLevel"])
async def test_a_modern_unknown_method_is_404_method_not_found(
    base: str, http: aiohttp.ClientSession, method: str
) -> None:
    answer = await post(http, f"{base}/mcp/main", modern(method), modern_headers(method))
    assert answer.status == 404
    assert answer.error()["code"] == -32601


async def test_get_on_the_endpoint_for_a_modern_client_is_405(base: str, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{base}/mcp/main", headers={"MCP-Protocol-Version": "2026-07-28"}) as resp:
        assert resp.status == 405


# --- legacy sessions --------------------------------------------------------------------------------------


async def test_a_legacy_request_without_a_session_is_400(base: str, http: aiohttp.ClientSession) -> None:
    answer = await post(http, f"{base}/mcp/main", {"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
    assert answer.status == 400
    assert "session" in answer.error()["message"].lower()


async def test_a_forged_session_id_is_404(base: str, http: aiohttp.ClientSession) -> None:
    answer = await post(http, f"{base}/mcp/main", {"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                        {"Mcp-Session-Id": "c2Vzc2lvbi1pLW1hZGUtdXA", "MCP-Protocol-Version": "2025-11-25"})
    assert answer.status == 404


async def test_a_tampered_session_id_is_404_while_the_genuine_one_works(base: str, http: aiohttp.ClientSession) -> None:
    sid = await legacy_session(http, f"{base}/mcp/main")
    listing = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
    good = await post(http, f"{base}/mcp/main", listing, {"Mcp-Session-Id": sid})
    assert good.status == 200 and good.json()["result"]["tools"]
    middle = len(sid) // 2
    tampered = sid[:middle] + ("A" if sid[middle] != "A" else "B") + sid[middle + 1:]
    bad = await post(http, f"{base}/mcp/main", listing, {"Mcp-Session-Id": tampered})
    assert bad.status == 404


async def test_a_deleted_session_is_404_afterwards(base: str, http: aiohttp.ClientSession) -> None:
    sid = await legacy_session(http, f"{base}/mcp/main")
    async with http.delete(f"{base}/mcp/main", headers={"Mcp-Session-Id": sid}) as resp:
        assert resp.status in (200, 204)
    answer = await post(http, f"{base}/mcp/main", {"jsonrpc": "2.0", "id": 3, "method": "tools/list"},
                        {"Mcp-Session-Id": sid})
    assert answer.status == 404


async def test_an_unknown_legacy_protocol_version_header_is_400(base: str, http: aiohttp.ClientSession) -> None:
    sid = await legacy_session(http, f"{base}/mcp/main")
    answer = await post(http, f"{base}/mcp/main", {"jsonrpc": "2.0", "id": 4, "method": "tools/list"},
                        {"Mcp-Session-Id": sid, "MCP-Protocol-Version": "1999-01-01"})
    assert answer.status == 400


# --- failing upstreams ----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_a_stalled_upstream_times_out_with_an_error_naming_it(base: str, mode: str) -> None:
    async with Client(f"{base}/mcp/main", mode=mode) as c:
        with pytest.raises(MCPError) as info:
            await c.call_tool("slow__hang", {})
        after = await c.call_tool("slow__echo", {"text": "still here"})
    err = info.value.error
    assert err.code == -32003
    assert "'slow'" in err.message and "1.0s" in err.message
    assert err.data == {"upstream": "slow"}
    assert isinstance(after.content[0], TextContent) and after.content[0].text == "still here"


async def test_an_upstream_that_goes_down_is_named_in_the_error_and_readyz_turns_503(env: Env) -> None:
    base = env.base
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/readyz") as resp:
            assert resp.status == 200, await resp.text()
        async with Client(f"{base}/mcp/main", mode="2026-07-28") as c:
            await c.call_tool("doomed__echo", {"text": "alive"})
            env.stack.close()  # stop the `doomed` upstream process
            for mode in MODES:
                async with Client(f"{base}/mcp/main", mode=mode) as c2:
                    with pytest.raises(MCPError) as info:
                        await c2.call_tool("doomed__echo", {"text": "anyone?"})
                    assert info.value.error.code == -32001
                    assert "'doomed'" in info.value.error.message
                    assert info.value.error.data == {"upstream": "doomed"}
                    still = await c2.call_tool("notes__get_note", {"note_id": 1})
                    assert not still.is_error
        async with http.get(f"{base}/healthz") as resp:
            assert resp.status == 200
        async with http.get(f"{base}/readyz") as resp:
            ready = await resp.json()
            assert resp.status == 503, ready
            assert ready["upstreams"]["doomed"]["ready"] is False
            assert ready["upstreams"]["notes"]["ready"] is True


async def test_an_upstream_down_from_the_start_leaves_stile_serving_the_others() -> None:
    dead = f"http://127.0.0.1:{free_port()}/mcp"
    with notes_upstream() as notes, stile_server({
        "upstreams": {"notes": {"url": notes}, "gone": {"url": dead, "connect_timeout": 1}},
        "virtual_servers": {"main": {"auth": "none"}},
    }) as base:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/healthz") as resp:
                assert resp.status == 200
            deadline = time.monotonic() + 20
            while True:  # discovery runs in the background after the server listens (core/health.py)
                async with http.get(f"{base}/readyz") as resp:
                    ready = await resp.json()
                    assert resp.status == 503
                if ready["upstreams"]["notes"]["ready"] or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.05)  # polling readiness between attempts, bounded by the deadline
            assert ready["upstreams"]["gone"]["ready"] is False and ready["upstreams"]["gone"]["error"]
            assert ready["upstreams"]["notes"]["ready"] is True
        for mode in MODES:
            async with Client(f"{base}/mcp/main", mode=mode) as c:
                names = [t.name for t in (await c.list_tools()).tools]
                with pytest.raises(MCPError) as info:
                    await c.read_resource("gone+x://anything")
                ok = await c.call_tool("notes__get_note", {"note_id": 1})
            assert names and all(n.startswith("notes__") for n in names)
            # nothing of an undiscovered upstream is visible, so its URIs answer like any unknown one
            assert info.value.error.message == "Resource not found: gone+x://anything"
            assert info.value.error.data == {"uri": "gone+x://anything"}
            assert not ok.is_error
