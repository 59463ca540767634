"""One chokepoint: every client message crosses its virtual server's chain; hidden answers like unknown.

Real processes over loopback: a Stile gateway in front of an SDK upstream that has a public and a
secret item of every kind and counts what reaches it (tests/fixtures/surface_server.py). Each test
names the finding of the adversarial review it pins (issue #10).
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

KEYS = {name: f"stile_test_{name}_{secrets.token_urlsafe(24)}"
        for name in ("limited", "norole", "methods", "admin", "tools", "wide")}


@dataclass
class Env:
    base: str
    upstream: str


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("chokepoint")
    argv = [sys.executable, "-u", "-m", "tests.fixtures.surface_server", "--port", "0"]
    with ready_process(argv, "surface upstream") as port:
        upstream = f"http://127.0.0.1:{port}"
        visible = {"allow_tools": ["surface.public_tool"], "allow_prompts": ["surface.public_prompt"],
                   "allow_resources": ["surface.res://public", "surface.pub://*"]}
        config = {
            "state": f"sqlite:///{tmp / 'state.db'}",
            "auth": {"key_cache_seconds": 0, "keys": [
                {"name": "limited-bot", "hash": hash_for_config(KEYS["limited"]), "roles": ["limited"]},
                {"name": "norole-bot", "hash": hash_for_config(KEYS["norole"]), "roles": ["elsewhere"]},
                {"name": "methods-bot", "hash": hash_for_config(KEYS["methods"]), "roles": ["methods"]},
                {"name": "auditor", "hash": hash_for_config(KEYS["admin"]), "roles": ["admin"]},
                {"name": "tools-bot", "hash": hash_for_config(KEYS["tools"]), "roles": ["tools-only"]},
                {"name": "wide-bot", "hash": hash_for_config(KEYS["wide"]), "roles": ["wide"]},
            ]},
            "upstreams": {"surface": {"url": f"{upstream}/mcp"}},
            "roles": {
                "limited": {"virtual_servers": ["guarded"], **visible},
                "methods": {"virtual_servers": ["guarded"], **visible, "allow_methods": ["vault/*"]},
                "elsewhere": {"virtual_servers": ["other"], "allow_tools": ["surface.*"]},
                "tools-only": {"allow_tools": ["surface.*"]},
                "wide": {"virtual_servers": ["wide"], "allow_tools": ["surface.*"], "allow_resources": ["surface.*"],
                         "allow_prompts": ["surface.*"]},
            },
            "virtual_servers": {
                "guarded": {"upstreams": ["surface"], "passthrough_methods": {"vault/*": "surface"}},
                "open": {"upstreams": ["surface"], "auth": "none", "prefix": "never"},
                "other": {"upstreams": ["surface"]},
                "wide": {"upstreams": ["surface"], "deny_resources": ["surface.res://secret"]},
            },
        }
        with stile_server(config) as base:
            yield Env(base, upstream)


async def _counts(env: Env) -> dict[str, int]:
    async with aiohttp.ClientSession() as http, http.get(f"{env.upstream}/stats") as r:
        data: dict[str, int] = await r.json()
        return data


async def _uris(env: Env) -> list[str]:
    async with aiohttp.ClientSession() as http, http.get(f"{env.upstream}/stats/uris") as r:
        data: list[str] = await r.json()
        return data


class Client:
    """A raw client of one era for one principal; legacy clients open a session first."""

    def __init__(self, http: aiohttp.ClientSession, env: Env, era: str, key: str | None, vs: str = "guarded"):
        self.http, self.env, self.era, self.key, self.vs = http, env, era, key, vs
        self.sid: str | None = None
        self.ids = 0

    def _headers(self, method: str, name: str | None) -> dict[str, str]:
        headers = dict(LEGACY_HEADERS)
        if self.key is not None:
            headers["X-API-Key"] = self.key
        if self.era == "modern":
            headers.update({"MCP-Protocol-Version": MODERN, "Mcp-Method": method})
            if name is not None:
                headers["Mcp-Name"] = name
        elif self.sid is not None:
            headers["Mcp-Session-Id"] = self.sid
        return headers

    async def initialize(self) -> tuple[int, Any]:
        body = {"jsonrpc": "2.0", "id": 0, "method": "initialize",
                "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                           "clientInfo": {"name": "t", "version": "0"}}}
        async with self.http.post(self.url, json=body, headers=self._headers("initialize", None)) as r:
            self.sid = r.headers.get("mcp-session-id")
            return r.status, await r.json(content_type=None)

    @property
    def url(self) -> str:
        return f"{self.env.base}/mcp/{self.vs}"

    async def send(self, method: str, params: dict[str, Any], *, name: str | None = None,
                   notification: bool = False) -> tuple[int, bytes]:
        self.ids += 1
        if self.era == "modern":
            params = {**params, "_meta": modern_meta()}
        body: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "params": params}
        if not notification:
            body["id"] = self.ids
        async with self.http.post(self.url, data=orjson.dumps(body), headers=self._headers(method, name)) as r:
            return r.status, await r.read()

    async def call(self, method: str, params: dict[str, Any], name: str | None = None) -> dict[str, Any]:
        status, raw = await self.send(method, params, name=name)
        data: dict[str, Any] = orjson.loads(raw)
        assert status in (200, 400, 404), (status, data)
        return data


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def _client(http: aiohttp.ClientSession, env: Env, era: str, key: str | None, vs: str = "guarded") -> Client:
    client = Client(http, env, era, key, vs)
    if era == "legacy":
        status, body = await client.initialize()
        assert status == 200, body
    return client


# --- finding 2: methods nobody classified ------------------------------------------------------
@pytest.mark.parametrize("era", ["legacy", "modern"])
@pytest.mark.parametrize("method", ["vault/admin_dump", "tasks/get", "tasks/list", "sampling/createMessage"])
async def test_an_unclassified_method_never_reaches_the_upstream(env: Env, http: aiohttp.ClientSession,
                                                                  era: str, method: str) -> None:
    before = await _counts(env)
    for key, vs in ((KEYS["limited"], "guarded"), (None, "open")):
        client = await _client(http, env, era, key, vs)
        body = await client.call(method, {"id": "x"})
        assert body["error"]["code"] == -32601, body
    assert (await _counts(env)).get(method, 0) == before.get(method, 0)


@pytest.mark.parametrize("era", ["legacy", "modern"])
async def test_a_passthrough_method_needs_the_virtual_server_route_and_a_role_grant(
        env: Env, http: aiohttp.ClientSession, era: str) -> None:
    limited = await _client(http, env, era, KEYS["limited"])
    before = (await _counts(env)).get("vault/admin_dump", 0)
    refused = await limited.call("vault/admin_dump", {})
    unknown = await limited.call("nothing/here", {})
    assert refused["error"]["code"] == unknown["error"]["code"] == -32601
    assert (await _counts(env)).get("vault/admin_dump", 0) == before
    granted = await _client(http, env, era, KEYS["methods"])
    await granted.call("vault/admin_dump", {})  # the SDK upstream itself answers -32601: it got there
    assert (await _counts(env)).get("vault/admin_dump", 0) == before + 1


async def test_logging_set_level_never_reaches_the_shared_upstream_session(
        env: Env, http: aiohttp.ClientSession) -> None:
    """One caller's level would change every other caller's logging on the upstream's shared session."""
    before = (await _counts(env)).get("logging/setLevel", 0)
    client = await _client(http, env, "legacy", KEYS["limited"])
    assert (await client.call("logging/setLevel", {"level": "debug"})) == {"jsonrpc": "2.0", "id": 1, "result": {}}
    assert (await client.call("logging/setLevel", {"level": 3}))["error"]["code"] == -32602
    assert (await _counts(env)).get("logging/setLevel", 0) == before


# --- finding 4: initialize, GET and listen streams cross the chain -----------------------------
async def test_a_principal_without_a_role_gets_no_session_no_stream_and_is_audited(
        env: Env, http: aiohttp.ClientSession) -> None:
    client = Client(http, env, "legacy", KEYS["norole"])
    status, body = await client.initialize()
    assert status == 403 and client.sid is None, body
    modern = Client(http, env, "modern", KEYS["norole"])
    status, raw = await modern.send("subscriptions/listen", {"notifications": {"toolsListChanged": True}})
    assert status == 403, raw
    async with http.get(f"{env.base}/sse/guarded", headers={"X-API-Key": KEYS["norole"]}) as r:
        assert r.status == 403
    events = await _audit(env, http, agent="norole-bot")
    methods = [e["method"] for e in events if e["outcome"] == "denied"]
    assert {"initialize", "subscriptions/listen", "stream/sse"} <= set(methods), events
    assert methods.count("initialize") == 1 and not [e for e in events if e["outcome"] == "error"], events


@pytest.mark.parametrize("method", ["notifications/cancelled", "notifications/roots/list_changed", "notifications/x"])
async def test_notifications_cross_the_chain_too(env: Env, http: aiohttp.ClientSession, method: str) -> None:
    refused = Client(http, env, "modern", KEYS["norole"])
    status, _ = await refused.send(method, {"requestId": 1}, notification=True)
    assert status == 403
    for era in ("legacy", "modern"):
        client = await _client(http, env, era, KEYS["limited"])
        status, raw = await client.send(method, {"requestId": 1}, notification=True)
        assert (status, raw) == (202, b""), (era, status, raw)


async def test_listen_acknowledges_every_uri_but_subscribes_and_delivers_only_visible_ones(
        env: Env, http: aiohttp.ClientSession) -> None:
    client = Client(http, env, "modern", KEYS["limited"])
    wanted = ["surface+res://secret", "surface+res://public", "surface+res://nope", "surface+sec://1"]
    body = {"jsonrpc": "2.0", "id": 7, "method": "subscriptions/listen",
            "params": {"notifications": {"resourceSubscriptions": wanted}, "_meta": modern_meta()}}
    before = len(await _uris(env))
    async with http.post(client.url, data=orjson.dumps(body),
                         headers=client._headers("subscriptions/listen", None)) as r:
        assert r.status == 200
        ack = orjson.loads((await r.content.readuntil(b"\n\n")).split(b"data: ", 1)[1])
    assert ack["params"]["notifications"]["resourceSubscriptions"] == sorted(wanted)
    assert (await _uris(env))[before:] == ["res://public"]


async def test_too_many_listen_subscriptions_are_refused_before_any_upstream_call(
        env: Env, http: aiohttp.ClientSession) -> None:
    client = Client(http, env, "modern", KEYS["limited"])
    before = (await _counts(env)).get("resources/subscribe", 0)
    wanted = [f"surface+pub://{i}" for i in range(3000)]
    status, raw = await client.send("subscriptions/listen", {"notifications": {"resourceSubscriptions": wanted}})
    assert status == 400 and orjson.loads(raw)["error"]["code"] == -32602, raw
    assert (await _counts(env)).get("resources/subscribe", 0) == before


# --- finding 12: roles grant nothing they do not name ------------------------------------------
async def test_a_role_without_resource_or_prompt_grants_sees_none(env: Env, http: aiohttp.ClientSession) -> None:
    limited = await _client(http, env, "modern", KEYS["limited"])
    assert [p["name"] for p in (await limited.call("prompts/list", {}))["result"]["prompts"]] == [
        "surface__public_prompt"]
    assert [r["uri"] for r in (await limited.call("resources/list", {}))["result"]["resources"]] == [
        "surface+res://public"]
    assert [t["uriTemplate"] for t in (await limited.call("resources/templates/list", {}))["result"][
        "resourceTemplates"]] == ["surface+pub://{item}"]


async def test_a_role_without_resource_or_prompt_grants_gets_none_by_default(
        env: Env, http: aiohttp.ClientSession) -> None:
    client = await _client(http, env, "modern", KEYS["tools"], vs="other")
    for method, key in (("prompts/list", "prompts"), ("resources/list", "resources"),
                        ("resources/templates/list", "resourceTemplates")):
        assert (await client.call(method, {}))["result"][key] == [], method
    assert len((await client.call("tools/list", {}))["result"]["tools"]) == 2


@pytest.mark.parametrize("era", ["legacy", "modern"])
async def test_a_hidden_uri_and_a_nonexistent_one_of_a_visible_upstream_answer_alike(
        env: Env, http: aiohttp.ClientSession, era: str) -> None:
    client = await _client(http, env, era, KEYS["wide"], vs="wide")
    before = await _counts(env)
    hidden, unknown = "surface+res://secret", "surface+res://nopeet"
    _, raw_h = await client.send("resources/read", {"uri": hidden}, name=hidden)
    _, raw_u = await client.send("resources/read", {"uri": unknown}, name=unknown)
    assert raw_h.replace(hidden.encode(), unknown.encode()).replace(b'"id":1', b'"id":2') == raw_u, (raw_h, raw_u)
    assert await _counts(env) == before


# --- finding 3 and must-have 3: hidden equals unknown, everywhere ------------------------------
HIDDEN_UNKNOWN = [  # (method, params with {} where the name goes, hidden name, unknown name, eras)
    ("tools/call", {"name": "{}", "arguments": {"text": "x"}}, "surface__secret_tool", "surface__nope_tool", "both"),
    ("prompts/get", {"name": "{}", "arguments": {}}, "surface__secret_prompt", "surface__nope_prompt", "both"),
    ("resources/read", {"uri": "{}"}, "surface+res://secret", "surface+res://nopeet", "both"),
    ("resources/read", {"uri": "{}"}, "surface+sec://1", "surface+zzz://1", "both"),
    ("resources/subscribe", {"uri": "{}"}, "surface+res://secret", "surface+res://nopeet", "legacy"),
    ("resources/unsubscribe", {"uri": "{}"}, "surface+sec://1", "surface+zzz://1", "legacy"),
    ("completion/complete", {"ref": {"type": "ref/prompt", "name": "{}"}, "argument": {"name": "topic", "value": ""}},
     "surface__secret_prompt", "surface__nope_prompt", "both"),
    ("completion/complete", {"ref": {"type": "ref/resource", "uri": "{}"}, "argument": {"name": "item", "value": ""}},
     "surface+sec://{item}", "surface+zzz://{item}", "both"),
]


def _fill(value: Any, name: str) -> Any:
    if isinstance(value, dict):
        return {k: _fill(v, name) for k, v in value.items()}
    return name if value == "{}" else value


CASES = [(era, *case[:4]) for case in HIDDEN_UNKNOWN for era in ("legacy", "modern") if case[4] in ("both", era)]


@pytest.mark.parametrize(("era", "method", "params", "hidden", "unknown"), CASES)
async def test_hidden_and_unknown_get_byte_identical_answers_and_no_upstream_traffic(
        env: Env, http: aiohttp.ClientSession, era: str, method: str, params: dict[str, Any], hidden: str,
        unknown: str) -> None:
    client = await _client(http, env, era, KEYS["limited"])
    before = await _counts(env)
    name_header = hidden if method in ("tools/call", "prompts/get", "resources/read") else None
    status_h, raw_h = await client.send(method, _fill(params, hidden), name=name_header)
    name_header = unknown if name_header is not None else None
    status_u, raw_u = await client.send(method, _fill(params, unknown), name=name_header)
    assert status_h == status_u
    assert raw_h.replace(hidden.encode(), unknown.encode()).replace(b'"id":1', b'"id":2') == raw_u, (raw_h, raw_u)
    assert orjson.loads(raw_u).get("error"), raw_u
    assert await _counts(env) == before


async def test_a_visible_template_uri_that_does_not_exist_gets_the_canonical_not_found(
        env: Env, http: aiohttp.ClientSession) -> None:
    client = await _client(http, env, "legacy", KEYS["limited"])
    body = await client.call("resources/read", {"uri": "surface+res://secret"})
    assert body["error"] == {"code": -32002, "message": "Resource not found: surface+res://secret",
                             "data": {"uri": "surface+res://secret"}}
    good = await client.call("resources/read", {"uri": "surface+pub://7"})
    assert good["result"]["contents"][0]["text"] == "public item 7"


# --- audit helper ------------------------------------------------------------------------------
async def _audit(env: Env, http: aiohttp.ClientSession, **query: str) -> list[dict[str, Any]]:
    """The trail's events for `query`, once the writer flushed them (polled with a deadline)."""
    import asyncio

    deadline = asyncio.get_running_loop().time() + 10
    events: list[dict[str, Any]] = []
    while asyncio.get_running_loop().time() < deadline:
        async with http.get(f"{env.base}/admin/audit", params=query, headers={"X-API-Key": KEYS["admin"]}) as r:
            assert r.status == 200, await r.text()
            events = (await r.json())["events"]
        if len(events) >= 3:
            return events
        await asyncio.sleep(0.05)  # polling the writer's flush, bounded by the deadline
    return events
