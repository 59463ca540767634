"""Legacy sessions end for good: DELETE holds across restarts and replicas, ids expire, and MRTR state
belongs to the principal it was issued to. Real `stile serve` processes over loopback."""

from __future__ import annotations

import base64
import json
import os
import secrets
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from stile.core import sessions
from stile.core.sessions import SessionSealer
from stile.stores.keys import hash_for_config
from stile.wire import sse
from tests.e2e.helpers import LEGACY_HEADERS, initialize_body, modern_headers
from tests.fixtures import fixture_server
from tests.support import notes_upstream, stile_server

PING = {"jsonrpc": "2.0", "id": 2, "method": "ping"}
PG_URL = os.environ.get("STILE_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")


def new_key() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode()


def config(notes: str, state: Path, **extra: Any) -> dict[str, Any]:
    return {"state": f"sqlite:///{state}", "upstreams": {"notes": {"url": notes}},
            "virtual_servers": {"open": {"auth": "none"}}, **extra}


async def open_session(http: aiohttp.ClientSession, base: str) -> str:
    async with http.post(f"{base}/mcp/open", json=initialize_body(), headers=LEGACY_HEADERS) as resp:
        assert resp.status == 200
        return resp.headers["mcp-session-id"]


async def ping(http: aiohttp.ClientSession, base: str, sid: str) -> int:
    async with http.post(f"{base}/mcp/open", json=PING, headers={**LEGACY_HEADERS, "Mcp-Session-Id": sid}) as r:
        await r.read()
        return r.status


async def delete(http: aiohttp.ClientSession, base: str, sid: str) -> int:
    async with http.delete(f"{base}/mcp/open", headers={"Mcp-Session-Id": sid}) as r:
        return r.status


async def test_a_deleted_session_stays_deleted_after_a_restart(tmp_path: Path) -> None:
    key = new_key()
    with notes_upstream() as notes:
        cfg = config(notes, tmp_path / "state.db")
        async with aiohttp.ClientSession() as http:
            with stile_server(cfg, env={"STILE_SESSION_KEY": key}) as base:
                sid, kept = await open_session(http, base), await open_session(http, base)
                assert await ping(http, base, sid) == 200
                assert await delete(http, base, sid) == 200
                assert await ping(http, base, sid) == 404
            with stile_server(cfg, env={"STILE_SESSION_KEY": key}) as base:
                assert await ping(http, base, sid) == 404
                assert await ping(http, base, kept) == 200  # other sessions survive the restart


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_a_session_deleted_on_one_replica_is_404_on_the_other(tmp_path: Path, backend: str) -> None:
    key = new_key()
    with notes_upstream() as notes:
        cfg = config(notes, tmp_path / "state.db", auth={"key_cache_seconds": 0})
        if backend == "postgres":  # the revocation table in PostgreSQL; the audit trail stays out of it
            cfg.update(state=PG_URL, audit={"store": False, "stdout": True})
        with stile_server(cfg, env={"STILE_SESSION_KEY": key}) as a, \
                stile_server(cfg, env={"STILE_SESSION_KEY": key}) as b:
            async with aiohttp.ClientSession() as http:
                sid = await open_session(http, a)
                assert await ping(http, b, sid) == 200
                assert await delete(http, a, sid) == 200
                assert await ping(http, b, sid) == 404
                assert await delete(http, b, sid) == 404


def _sealed_at(key: str, issued: float, monkeypatch: pytest.MonkeyPatch) -> str:
    """A session id for `open` minted with the gateway's key, as if `issued` were now."""
    with monkeypatch.context() as m:
        m.setattr(sessions.time, "time", lambda: issued)
        sid, _ = SessionSealer(base64.b64decode(key)).mint("2025-11-25", "open", {}, None)
    return sid


async def test_a_session_older_than_session_lifetime_is_404(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = new_key()
    with notes_upstream() as notes:
        cfg = config(notes, tmp_path / "state.db", limits={"session_lifetime": 3600})
        with stile_server(cfg, env={"STILE_SESSION_KEY": key}) as base:
            async with aiohttp.ClientSession() as http:
                assert await ping(http, base, _sealed_at(key, time.time() - 600, monkeypatch)) == 200
                assert await ping(http, base, _sealed_at(key, time.time() - 3700, monkeypatch)) == 404


async def test_by_default_a_session_lives_a_day(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = new_key()
    with notes_upstream() as notes, \
            stile_server(config(notes, tmp_path / "state.db"), env={"STILE_SESSION_KEY": key}) as base:
        async with aiohttp.ClientSession() as http:
            assert await ping(http, base, _sealed_at(key, time.time() - 23 * 3600, monkeypatch)) == 200
            assert await ping(http, base, _sealed_at(key, time.time() - 25 * 3600, monkeypatch)) == 404


# --- MRTR requestState belongs to the principal that received it ----------------------------------------

SAMPLING_ANSWER = {"role": "assistant", "model": "m", "content": {"type": "text", "text": "four"}}


async def _call(http: aiohttp.ClientSession, base: str, key: str, params: dict[str, Any]) -> dict[str, Any]:
    meta = {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientCapabilities": {"sampling": {}}}
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {**params, "_meta": meta}}
    headers = {**modern_headers("tools/call", params["name"]), "X-API-Key": key}
    async with http.post(f"{base}/mcp/fx", json=body, headers=headers) as resp:
        raw = await resp.read()
        if resp.headers.get("content-type", "").startswith("text/event-stream"):
            reply: dict[str, Any] = json.loads(sse.Decoder().feed(raw)[-1].data)
            return reply
        parsed: dict[str, Any] = json.loads(raw)
        return parsed


async def test_a_request_state_cannot_be_resumed_by_another_principal(tmp_path: Path) -> None:
    alice, bob = "stile_gitops_" + secrets.token_urlsafe(32), "stile_gitops_" + secrets.token_urlsafe(32)
    with fixture_server() as fx:
        cfg = {
            "state": f"sqlite:///{tmp_path / 'state.db'}",
            "auth": {"keys": [{"name": "alice", "hash": hash_for_config(alice), "roles": ["all"]},
                              {"name": "bob", "hash": hash_for_config(bob), "roles": ["all"]}]},
            "roles": {"all": {"allow_tools": ["fx.*"]}},
            "upstreams": {"fx": {"url": fx, "era": "legacy"}},
            "virtual_servers": {"fx": {}},
        }
        with stile_server(cfg) as base:
            async with aiohttp.ClientSession() as http:
                call = {"name": "fx__test_sampling", "arguments": {"prompt": "2+2?"}}
                first = await _call(http, base, alice, call)
                assert first["result"]["resultType"] == "input_required", first
                (ask,) = first["result"]["inputRequests"]
                retry = {**call, "requestState": first["result"]["requestState"],
                         "inputResponses": {ask: SAMPLING_ANSWER}}
                stolen = await _call(http, base, bob, retry)
                assert "result" not in stolen, stolen
                assert stolen["error"]["code"] == -32602
                mine = await _call(http, base, alice, retry)
                assert "LLM response: four" in json.dumps(mine["result"]), mine
