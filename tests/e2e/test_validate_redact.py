"""Schema validation and redaction over real sockets: a Stile gateway in front of an SDK upstream.

The upstream (tests/fixtures/schema_server.py) is registered twice, as a legacy-era (`sl`) and a
modern-era (`sm`) upstream, and reached by raw clients of both eras. It counts the tool calls it
receives, so "nothing forwarded" is checked from the upstream's side.

Virtual servers: `enf` (input and output enforced, results masked), `warn` (both warned, results
with PII blocked), `plain` (validation off, no detectors).
"""

from __future__ import annotations

import secrets
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
import pytest

from stile.stores.keys import hash_for_config
from tests.e2e.helpers import LEGACY_HEADERS, MODERN, modern_meta
from tests.support import ready_process, stile_server

KEYS = {name: f"stile_test_{name}_{secrets.token_urlsafe(24)}" for name in ("agent", "auditor")}
ERAS = ["legacy", "modern"]
UPSTREAMS = ["sl", "sm"]  # the same SDK server as a legacy-era and as a modern-era upstream
GOOD = {"query": "q", "limit": 2, "tags": ["a", "b"], "exact": False, "sort": "asc"}


@dataclass
class Env:
    base: str
    upstream: str


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("validate")
    argv = [sys.executable, "-u", "-m", "tests.fixtures.schema_server", "--port", "0"]
    with ready_process(argv, "schema upstream") as port:
        upstream = f"http://127.0.0.1:{port}"
        grants = {"allow_tools": ["sl.*", "sm.*"], "allow_resources": ["sl.*", "sm.*"],
                  "allow_prompts": ["sl.*", "sm.*"]}
        config = {
            "state": f"sqlite:///{tmp / 'state.db'}",
            "auth": {"key_cache_seconds": 0, "keys": [
                {"name": "agent", "hash": hash_for_config(KEYS["agent"]), "roles": ["reader"]},
                {"name": "auditor", "hash": hash_for_config(KEYS["auditor"]), "roles": ["auditor"]},
            ]},
            "upstreams": {"sl": {"url": f"{upstream}/mcp", "era": "legacy"},
                          "sm": {"url": f"{upstream}/mcp", "era": "modern"}},
            "roles": {"reader": grants, "auditor": grants},
            "virtual_servers": {name: {"upstreams": UPSTREAMS} for name in ("enf", "warn", "plain")},
            "policies": {
                "validate": {"virtual_servers": {"enf": {"output": "enforce"}, "warn": {"input": "warn"},
                                                 "plain": {"input": "off", "output": "off"}}},
                "redact": {"detectors": ["all"], "roles": {"auditor": {"exempt": True}},
                           "virtual_servers": {"warn": {"action": "block"}, "plain": {"detectors": []}}},
            },
        }
        with stile_server(config) as base:
            yield Env(base, upstream)


class Client:
    """A raw client of one era on one virtual server; legacy clients open a session first."""

    def __init__(self, http: aiohttp.ClientSession, env: Env, era: str, key: str, vs: str) -> None:
        self.http, self.env, self.era, self.key, self.vs = http, env, era, key, vs
        self.sid: str | None = None
        self.ids = 0

    def headers(self, method: str, name: str | None) -> dict[str, str]:
        h = {**LEGACY_HEADERS, "X-API-Key": self.key}
        if self.era == "modern":
            h.update({"MCP-Protocol-Version": MODERN, "Mcp-Method": method})
            if name is not None:
                h["Mcp-Name"] = name
        elif self.sid is not None:
            h["Mcp-Session-Id"] = self.sid
        return h

    async def call(self, method: str, params: dict[str, Any], name: str | None = None) -> dict[str, Any]:
        self.ids += 1
        if self.era == "modern":
            params = {**params, "_meta": modern_meta()}
        body = {"jsonrpc": "2.0", "id": self.ids, "method": method, "params": params}
        async with self.http.post(f"{self.env.base}/mcp/{self.vs}", data=orjson.dumps(body),
                                  headers=self.headers(method, name)) as r:
            if method == "initialize":
                self.sid = r.headers.get("mcp-session-id")
            data: dict[str, Any] = orjson.loads(await r.read())
            assert r.status == 200, (r.status, data)
            return data

    async def tool(self, name: str, args: dict[str, Any] | None) -> dict[str, Any]:
        params: dict[str, Any] = {"name": name}
        if args is not None:
            params["arguments"] = args
        return await self.call("tools/call", params, name)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def _client(http: aiohttp.ClientSession, env: Env, era: str, vs: str, key: str = "agent") -> Client:
    client = Client(http, env, era, KEYS[key], vs)
    if era == "legacy":
        body = await client.call("initialize", {"protocolVersion": "2025-11-25", "capabilities": {},
                                                "clientInfo": {"name": "t", "version": "0"}})
        assert "result" in body, body
    return client


async def _calls(env: Env, http: aiohttp.ClientSession, tool: str) -> int:
    async with http.get(f"{env.upstream}/stats") as r:
        counts: dict[str, int] = await r.json()
    return counts.get(f"tools/call:{tool}", 0)


# --- input validation ----------------------------------------------------------------------------
BAD_ARGUMENTS = [
    ({**GOOD, "limit": -1}, "arguments.limit", "arguments.limit: -1 is less than the minimum of 0"),
    ({**GOOD, "sort": "sideways"}, "arguments.sort", "arguments.sort: "),
    ({**GOOD, "tags": ["a", 3]}, "arguments.tags[1]", 'arguments.tags[1]: 3 is not of type "string"'),
    ({k: v for k, v in GOOD.items() if k != "query"}, "arguments", 'arguments: "query" is a required property'),
    (None, "arguments", "is a required property"),
]


@pytest.mark.parametrize("era", ERAS)
@pytest.mark.parametrize("up", UPSTREAMS)
@pytest.mark.parametrize(("args", "path", "message"), BAD_ARGUMENTS)
async def test_invalid_arguments_get_32602_naming_the_path_and_never_reach_the_upstream(
        env: Env, http: aiohttp.ClientSession, era: str, up: str, args: dict[str, Any] | None, path: str,
        message: str) -> None:
    client = await _client(http, env, era, "enf")
    before = await _calls(env, http, "search")
    body = await client.tool(f"{up}__search", args)
    assert body["error"]["code"] == -32602, body
    assert message in body["error"]["message"], body
    assert body["error"]["data"] == {"tool": f"{up}__search", "path": path}
    assert await _calls(env, http, "search") == before


@pytest.mark.parametrize("era", ERAS)
@pytest.mark.parametrize("up", UPSTREAMS)
async def test_valid_arguments_are_forwarded_and_answered(env: Env, http: aiohttp.ClientSession, era: str,
                                                          up: str) -> None:
    client = await _client(http, env, era, "enf")
    before = await _calls(env, http, "search")
    body = await client.tool(f"{up}__search", GOOD)
    assert body["result"]["structuredContent"] == {"query": "q", "limit": 2, "hits": ["q:a", "q:b"]}, body
    assert await _calls(env, http, "search") == before + 1


@pytest.mark.parametrize("era", ERAS)
@pytest.mark.parametrize("vs", ["warn", "plain"])
async def test_warn_and_off_forward_invalid_arguments_to_the_upstream(env: Env, http: aiohttp.ClientSession,
                                                                     era: str, vs: str) -> None:
    client = await _client(http, env, era, vs)
    before = await _calls(env, http, "search")
    body = await client.tool("sl__search", {**GOOD, "limit": -1})
    assert body["result"]["isError"] is True, body  # the upstream's own validation answered
    assert await _calls(env, http, "search") == before + 1


@pytest.mark.parametrize("era", ERAS)
async def test_a_tool_whose_schema_does_not_compile_is_not_validated(env: Env, http: aiohttp.ClientSession,
                                                                     era: str) -> None:
    client = await _client(http, env, era, "enf")
    before = await _calls(env, http, "broken")
    body = await client.tool("sm__broken", {"x": 5})
    assert body["result"]["content"][0]["text"] == "broken:5", body  # fail open: forwarded and answered
    assert await _calls(env, http, "broken") == before + 1


# --- output validation ---------------------------------------------------------------------------
@pytest.mark.parametrize("era", ERAS)
@pytest.mark.parametrize("up", UPSTREAMS)
async def test_output_violating_the_schema_is_an_error_result_under_enforce(
        env: Env, http: aiohttp.ClientSession, era: str, up: str) -> None:
    client = await _client(http, env, era, "enf")
    body = await client.tool(f"{up}__drift", {"valid": False})
    res = body["result"]
    assert res["isError"] is True and "structuredContent" not in res, body
    assert 'structuredContent.count: "three" is not of type "integer"' in res["content"][0]["text"]
    missing = (await client.tool(f"{up}__drift", {"omit": True}))["result"]
    assert missing["isError"] is True and "structuredContent: missing" in missing["content"][0]["text"]
    ok = (await client.tool(f"{up}__drift", {"valid": True}))["result"]
    assert ok["structuredContent"] == {"count": 3} and not ok.get("isError")


@pytest.mark.parametrize("era", ERAS)
@pytest.mark.parametrize("vs", ["warn", "plain"])
async def test_output_violations_pass_through_under_warn_and_off(env: Env, http: aiohttp.ClientSession, era: str,
                                                                 vs: str) -> None:
    client = await _client(http, env, era, vs)
    res = (await client.tool("sm__drift", {"valid": False}))["result"]
    assert res["structuredContent"] == {"count": "three"} and not res.get("isError"), res


# --- redaction -----------------------------------------------------------------------------------
RAW = ["ada@example.com", "+44 20 7946 0958", "4111 1111 1111 1111", "DE89 3704 0044 0532 0130 00",
       "192.168.10.20", "AKIAIOSFODNN7EXAMPLE", "hunter22"]


@pytest.mark.parametrize("era", ERAS)
@pytest.mark.parametrize("up", UPSTREAMS)
async def test_pii_in_tool_results_is_masked_for_a_plain_role(env: Env, http: aiohttp.ClientSession, era: str,
                                                             up: str) -> None:
    client = await _client(http, env, era, "enf")
    res = (await client.tool(f"{up}__customer", {}))["result"]
    text = orjson.dumps(res).decode()
    for value in [*RAW, "5555 5555 5555 4444", "Zx9qL2mN8vB4kR7tY1wEaP3s"]:
        assert value not in text, (value, res)
    for label in ("email", "phone", "card", "iban", "ip", "aws_key", "high_entropy"):
        assert f"[REDACTED:{label}]" in text
    sc = res["structuredContent"]
    assert sc["name"] == "Ada Lovelace" and sc["email"] == "[REDACTED:email]"
    assert sc["api_token"] == "[REDACTED:high_entropy]" and sc["card"] == "[REDACTED:card]"
    assert "Order 1234 shipped." in sc["note"]  # what is not PII is kept


@pytest.mark.parametrize("era", ERAS)
async def test_an_exempt_role_sees_results_unmasked(env: Env, http: aiohttp.ClientSession, era: str) -> None:
    client = await _client(http, env, era, "enf", key="auditor")
    text = orjson.dumps((await client.tool("sm__customer", {}))["result"]).decode()
    assert all(value in text for value in RAW) and "[REDACTED" not in text


@pytest.mark.parametrize("era", ERAS)
@pytest.mark.parametrize("up", UPSTREAMS)
async def test_pii_in_resource_contents_is_masked(env: Env, http: aiohttp.ClientSession, era: str, up: str) -> None:
    client = await _client(http, env, era, "enf")
    uri = f"{up}+crm://customer/7"
    body = await client.call("resources/read", {"uri": uri}, uri)
    (content,) = body["result"]["contents"]
    assert content["uri"] == uri
    assert "[REDACTED:email]" in content["text"] and "ada@example.com" not in content["text"], content


@pytest.mark.parametrize("era", ERAS)
@pytest.mark.parametrize("up", UPSTREAMS)
async def test_pii_in_prompt_messages_is_masked(env: Env, http: aiohttp.ClientSession, era: str, up: str) -> None:
    client = await _client(http, env, era, "enf")
    body = await client.call("prompts/get", {"name": f"{up}__contact"}, f"{up}__contact")
    text = body["result"]["messages"][0]["content"]["text"]
    assert text.startswith("Write to this customer: Customer Ada Lovelace, [REDACTED:email]"), body
    assert "4111 1111 1111 1111" not in text


@pytest.mark.parametrize("era", ERAS)
async def test_block_withholds_a_result_with_pii_and_names_the_detectors(env: Env, http: aiohttp.ClientSession,
                                                                        era: str) -> None:
    client = await _client(http, env, era, "warn")
    body = await client.tool("sl__customer", {})
    assert body["error"]["code"] == -32010, body
    assert "ada@example.com" not in orjson.dumps(body).decode()
    assert {"email", "card", "iban"} <= set(body["error"]["data"]["detectors"])
    clean = await client.tool("sl__search", GOOD)
    assert clean["result"]["structuredContent"]["hits"] == ["q:a", "q:b"]  # no PII: not blocked


@pytest.mark.parametrize("era", ERAS)
async def test_a_server_without_detectors_returns_results_unchanged(env: Env, http: aiohttp.ClientSession,
                                                                   era: str) -> None:
    client = await _client(http, env, era, "plain")
    text = orjson.dumps((await client.tool("sl__customer", {}))["result"]).decode()
    assert all(value in text for value in RAW) and "[REDACTED" not in text


# --- mid-call messages: progress, log data, elicitation prompts ---------------------------------
async def _stream(client: Client, params: dict[str, Any]) -> aiohttp.ClientResponse:
    client.ids += 1
    if client.era == "modern":
        params = {**params, "_meta": {**modern_meta(), **params.get("_meta", {})}}
    body = {"jsonrpc": "2.0", "id": client.ids, "method": "tools/call", "params": params}
    resp = await client.http.post(f"{client.env.base}/mcp/{client.vs}", data=orjson.dumps(body),
                                  headers=client.headers("tools/call", params["name"]))
    assert resp.status == 200
    return resp


async def _messages(resp: aiohttp.ClientResponse) -> AsyncIterator[dict[str, Any]]:
    """The JSON-RPC messages of an answer: one JSON body, or the data lines of an SSE stream as they come."""
    if resp.headers.get("content-type", "").startswith("application/json"):
        yield orjson.loads(await resp.read())
        return
    async for line in resp.content:
        if line.startswith(b"data:"):
            yield orjson.loads(line[5:])


@pytest.mark.parametrize("era", ERAS)
@pytest.mark.parametrize("up", UPSTREAMS)
async def test_progress_and_log_messages_are_masked_on_their_way(env: Env, http: aiohttp.ClientSession, era: str,
                                                                 up: str) -> None:
    client = await _client(http, env, era, "enf")
    resp = await _stream(client, {"name": f"{up}__chatty", "arguments": {}, "_meta": {"progressToken": "p1"}})
    seen = [m async for m in _messages(resp)]
    text = orjson.dumps(seen).decode()
    assert "ada@example.com" not in text, seen
    progress = [m["params"] for m in seen if m.get("method") == "notifications/progress"]
    assert progress and progress[0]["message"] == "writing to [REDACTED:email]", seen
    assert progress[0]["progressToken"] == "p1"  # the token is not scanned
    logs = [m["params"] for m in seen if m.get("method") == "notifications/message"]
    assert all("[REDACTED:email]" in orjson.dumps(p).decode() for p in logs), logs
    assert seen[-1]["result"]["content"][0]["text"] == "done"


async def test_an_elicitation_prompt_is_masked_in_a_modern_clients_input_required(
        env: Env, http: aiohttp.ClientSession) -> None:
    up = "sl"  # a legacy upstream's elicitation, bridged by Stile (the SDK's modern server cannot ask mid-call)
    client = await _client(http, env, "modern", "enf")
    caps = {"io.modelcontextprotocol/clientCapabilities": {"elicitation": {}}}
    resp = await _stream(client, {"name": f"{up}__chatty", "arguments": {"ask": True}, "_meta": caps})
    seen = [m async for m in _messages(resp)]
    body = seen[-1]
    assert "result" in body, seen
    res = body["result"]
    assert res["resultType"] == "input_required", body
    (ask,) = res["inputRequests"].values()
    assert ask["method"] == "elicitation/create"
    assert ask["params"]["message"] == "Really write to [REDACTED:email]?"
    assert "ada@example.com" not in orjson.dumps(seen).decode()


async def test_an_elicitation_prompt_is_masked_on_a_legacy_stream_and_the_call_completes(
        env: Env, http: aiohttp.ClientSession) -> None:
    client = Client(http, env, "legacy", KEYS["agent"], "enf")
    await client.call("initialize", {"protocolVersion": "2025-11-25", "capabilities": {"elicitation": {}},
                                     "clientInfo": {"name": "t", "version": "0"}})
    resp = await _stream(client, {"name": "sl__chatty", "arguments": {"ask": True}})
    seen: list[dict[str, Any]] = []
    async for msg in _messages(resp):
        seen.append(msg)
        if msg.get("method") == "elicitation/create":
            assert msg["params"]["message"] == "Really write to [REDACTED:email]?"
            answer = {"jsonrpc": "2.0", "id": msg["id"], "result": {"action": "accept", "content": {"ok": True}}}
            async with http.post(f"{env.base}/mcp/enf", data=orjson.dumps(answer),
                                 headers=client.headers("", None)) as r:
                assert r.status == 202
    assert "ada@example.com" not in orjson.dumps(seen).decode()
    assert seen[-1]["result"]["content"][0]["text"] == "answered accept", seen
