"""The JSON admin API (/admin/audit, /admin/usage) on a real Stile process, fed by real MCP traffic."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from mcp import Client

from stile.assembly import assemble
from stile.config.load import parse_config
from stile.frontends.app import StileApp
from stile.stores.keys import hash_for_config
from tests.support import notes_upstream, stile_server

META = {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}}


@dataclass
class Env:
    base: str
    admin_key: str
    dev_key: str


async def _mcp(base: str, vs: str, key: str | None, name: str, arguments: dict[str, Any]) -> int:
    headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream",
               "MCP-Protocol-Version": "2026-07-28", "Mcp-Method": "tools/call", "Mcp-Name": name}
    if key is not None:
        headers["X-API-Key"] = key
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": name, "arguments": arguments, "_meta": META}}
    async with aiohttp.ClientSession() as http, http.post(f"{base}/mcp/{vs}", json=body, headers=headers) as r:
        await r.read()
        return r.status


async def _traffic(env: Env) -> None:
    async with Client(f"{env.base}/mcp/open", mode="2026-07-28") as client:
        await client.call_tool("notes__add_note", {"title": "t", "text": "x"})
        await client.call_tool("notes__get_note", {"note_id": 1})
    assert await _mcp(env.base, "keyed", env.dev_key, "notes__add_note", {"title": "a", "text": "b"}) == 200
    assert await _mcp(env.base, "keyed", env.dev_key, "notes__add_note", {"title": "c", "text": "d"}) == 200
    assert await _mcp(env.base, "keyed", None, "notes__add_note", {"title": "e", "text": "f"}) == 401


@pytest.fixture(scope="module", params=["store", "jsonl"])
def env(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Env]:
    """The same traffic read back from the default sink (the SQLite state store) and from a JSONL file."""
    tmp = tmp_path_factory.mktemp("admin")
    audit = {"store": True} if request.param == "store" else {"store": False, "jsonl": str(tmp / "audit.jsonl")}
    admin_key, dev_key = (f"stile_test_{secrets.token_urlsafe(32)}" for _ in range(2))
    with notes_upstream() as url:
        config = {
            "state": f"sqlite:///{tmp / 'state.db'}",
            "upstreams": {"notes": {"url": url}},
            "virtual_servers": {"open": {"auth": "none"}, "keyed": {}},
            "auth": {"keys": [{"name": "ops", "hash": hash_for_config(admin_key), "roles": ["auditor"]},
                              {"name": "dev-bot", "hash": hash_for_config(dev_key), "roles": ["dev"]}]},
            "roles": {"dev": {"allow_tools": ["notes.*"]}},
            "admin": {"roles": ["auditor"]},
            "costs": {"notes.add_note": 2.5},
            "audit": audit,
        }
        with stile_server(config) as base:
            env = Env(base, admin_key, dev_key)
            asyncio.run(_traffic(env))
            yield env


async def _get(env: Env, path: str, key: str | None = "admin", **headers: str) -> tuple[int, dict[str, str], Any]:
    if key is not None:
        headers["X-API-Key"] = env.admin_key if key == "admin" else key
    async with aiohttp.ClientSession() as http, http.get(f"{env.base}{path}", headers=headers) as r:
        body = await r.json(content_type=None) if r.content_type == "application/json" else await r.text()
        return r.status, dict(r.headers), body


async def _events(env: Env, query: str, count: int) -> list[dict[str, Any]]:
    """Poll until `count` events match (the audit writer flushes in the background), within a deadline."""
    deadline = time.monotonic() + 15
    while True:
        status, _, body = await _get(env, f"/admin/audit?{query}")
        assert status == 200, body
        if len(body["events"]) >= count or time.monotonic() > deadline:
            return list(body["events"])


async def test_audit_search_filters_by_principal_tool_and_outcome(env: Env) -> None:
    calls = await _events(env, "tool=notes__*&limit=50", 5)
    assert [(e["principal"]["agent"], e["tool"], e["outcome"]) for e in calls] == [
        (None, "notes__add_note", "ok"), (None, "notes__get_note", "ok"),
        ("dev-bot", "notes__add_note", "ok"), ("dev-bot", "notes__add_note", "ok"),
        (None, "notes__add_note", "unauthenticated")]
    mine = await _events(env, "agent=dev-bot&outcome=ok", 2)
    assert len(mine) == 2 and all(e["cost"] == 2.5 and e["hash"] for e in mine)
    assert [e["tool"] for e in await _events(env, "agent=dev-bot&limit=1", 1)] == ["notes__add_note"]
    refused = await _events(env, "outcome=unauthenticated", 1)
    assert refused[0]["virtual_server"] == "keyed"
    assert await _events(env, "since=2000-01-01T00:00:00Z&until=2000-01-02T00:00:00Z", 0) == []


async def test_usage_by_tool_and_by_agent(env: Env) -> None:
    await _events(env, "tool=notes__*", 5)  # everything has been written
    status, _, body = await _get(env, "/admin/usage?by=tool&since=1h")
    assert status == 200, body
    rows = {r["key"]: r for r in body["rows"]}
    add = rows["notes__add_note"]
    assert (add["calls"], add["errors"], add["cost"]) == (4, 1, 7.5)  # 3 ok at 2.5 units, 1 refused at 0
    assert add["p50_ms"] is not None and add["p50_ms"] <= add["p95_ms"]
    assert (rows["notes__get_note"]["calls"], rows["notes__get_note"]["cost"]) == (1, 1.0)
    status, _, body = await _get(env, "/admin/usage?by=agent")
    assert status == 200 and body["by"] == "agent"
    assert {r["key"]: (r["calls"], r["cost"]) for r in body["rows"]}["dev-bot"] == (2, 5.0)


async def test_without_a_key_401_and_without_the_role_403(env: Env) -> None:
    status, headers, body = await _get(env, "/admin/audit", key=None)
    assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer") and body["error"] == "unauthorized"
    status, headers, _ = await _get(env, "/admin/usage", key="stile_bogus_key_0123456789")
    assert status == 401 and 'error="invalid_token"' not in headers["WWW-Authenticate"]  # an X-API-Key, no bearer
    status, headers, _ = await _get(env, "/admin/usage", key=None, Authorization="Bearer not-a-token")
    assert status == 401 and 'error="invalid_token"' in headers["WWW-Authenticate"]
    status, _, body = await _get(env, "/admin/audit", key=env.dev_key)
    assert status == 403 and body["error"] == "forbidden"


async def test_reading_the_trail_is_itself_on_the_trail(env: Env) -> None:
    status, _, _ = await _get(env, "/admin/audit", key=env.dev_key)
    assert status == 403
    await _get(env, "/admin/usage?by=agent")
    refused = await _events(env, "server=(admin)&outcome=denied", 1)
    assert refused[-1]["principal"]["agent"] == "dev-bot" and refused[-1]["method"] == "GET /admin/audit"
    reads = await _events(env, "server=(admin)&outcome=ok&agent=ops", 1)
    assert any(e["method"] == "GET /admin/usage" and e["reason"] == "by=agent" for e in reads), reads


@pytest.mark.parametrize(("query", "parameter"), [
    ("since=yesterday", "since"), ("until=soon", "until"), ("limit=0", "limit"), ("limit=abc", "limit"),
    ("limit=100001", "limit"), ("colour=red", "colour"), ("agent=a&agent=b", "agent"), ("agent=", "agent"),
    ("outcome=ok,bogus", "outcome"),
])
async def test_bad_audit_parameters_are_400_naming_the_parameter(env: Env, query: str, parameter: str) -> None:
    status, _, body = await _get(env, f"/admin/audit?{query}")
    assert status == 400 and body["parameter"] == parameter, body


async def test_bad_usage_parameters_and_unknown_paths(env: Env) -> None:
    status, _, body = await _get(env, "/admin/usage?by=colour")
    assert status == 400 and body["parameter"] == "by"
    status, _, body = await _get(env, "/admin/usage?since=-1")
    assert status == 200  # epoch seconds: everything since 1969
    status, _, body = await _get(env, "/admin/nothing-here")
    assert status == 404
    async with aiohttp.ClientSession() as http, http.post(f"{env.base}/admin/audit",
                                                          headers={"X-API-Key": env.admin_key}) as r:
        assert r.status == 405


async def test_host_and_origin_checks_still_apply(env: Env) -> None:
    status, _, _ = await _get(env, "/admin/audit", Origin="https://evil.example")
    assert status == 403
    status, _, _ = await _get(env, "/admin/audit", Host="evil.example")
    assert status == 421


# In process (no upstream needed): the switches that need a differently configured gateway.


async def _asgi_get(app: StileApp, path: str, key: str) -> tuple[int, bytes]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        sent.append(dict(message))

    scope = {"type": "http", "method": "GET", "path": path, "query_string": b"",
             "headers": [(b"host", b"127.0.0.1"), (b"x-api-key", key.encode())]}
    await app(scope, receive, send)
    return sent[0]["status"], sent[1]["body"]


def _app(tmp_path: Path, key: str, **extra: Any) -> StileApp:
    cfg = parse_config({"upstreams": {}, "virtual_servers": {},
                        "auth": {"keys": [{"name": "ops", "hash": hash_for_config(key), "roles": ["admin"]}]},
                        **extra})
    return StileApp(assemble(cfg, f"sqlite:///{tmp_path / 'state.db'}"), start_gateway=False)


async def test_a_disabled_admin_api_is_404_and_so_is_a_missing_audit_source(tmp_path: Path) -> None:
    key = f"stile_test_{secrets.token_urlsafe(32)}"
    app = _app(tmp_path, key, admin={"enabled": False})
    assert (await _asgi_get(app, "/admin/audit", key))[0] == 404
    app = _app(tmp_path, key, audit={"store": False})
    status, body = await _asgi_get(app, "/admin/audit", key)
    assert status == 404 and b"no audit store configured" in body
    app = _app(tmp_path, key, audit={"store": True})  # store on, no state database written yet: no events
    assert await _asgi_get(app, "/admin/usage", key) == (200, b'{"by":"tool","rows":[]}')
    assert await _asgi_get(app, "/admin/audit", key) == (200, b'{"events":[]}')
