"""Identity and tool-level access control end to end: keys, JWTs, roles, rules, 401/403, metadata."""

from __future__ import annotations

import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from joserfc import jwt
from joserfc.jwk import RSAKey

from stile.stores.keys import hash_for_config
from tests.e2e.helpers import counting_upstream
from tests.support import files_upstream_config, free_port, notes_upstream, stile_server

ISSUER = "https://idp.test"
META = {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}}


@dataclass
class Env:
    base: str
    config: Path
    support_key: str
    declared_key: str
    signing_key: RSAKey


def _stile_cli(*args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "stile", *args], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("identity")
    port = free_port()
    signing = RSAKey.generate_key(2048, parameters={"kid": "k1"})
    declared = "stile_gitops_" + secrets.token_urlsafe(32)
    with notes_upstream() as notes_url:
        config = {
            "state": f"sqlite:///{tmp / 'state.db'}",
            "public_url": f"http://127.0.0.1:{port}",
            "auth": {
                "key_cache_seconds": 0,
                "keys": [{"name": "gitops-bot", "hash": hash_for_config(declared), "roles": ["reader"]}],
                "jwt": [{"issuer": ISSUER, "jwks": {"keys": [signing.as_dict(private=False)]}}],
                "scopes_supported": ["mcp:tools"],
            },
            "upstreams": {"notes": {"url": notes_url}, "files": files_upstream_config()},
            "roles": {
                "support": {"virtual_servers": ["scoped"], "allow_tools": ["notes.*"],
                            "deny_tools": ["notes.delete_note"]},
                "reader": {"allow_tools": ["notes.*", "files.*"], "read_only": True},
            },
            "rules": [
                {"name": "short-titles", "deny": 'tool.name == "notes.add_note" && size(arguments.title) > 10',
                 "reason": "titles must be short"},
                {"name": "watch-reads", "deny": 'tool.name == "notes.get_note"', "mode": "shadow"},
            ],
            "virtual_servers": {"scoped": {"upstreams": ["notes", "files"]},
                                "open": {"upstreams": ["notes"], "auth": "none"},
                                "stepup": {"upstreams": ["notes"], "scopes": ["mcp:tools", "notes:write"]}},
        }
        path = tmp / "stile.yaml"
        path.write_text(yaml.safe_dump(config), encoding="utf-8")
        key = _stile_cli("keys", "create", "--config", str(path), "--name", "support-agent", "--roles", "support")
        with stile_server(config, port=port) as base:
            yield Env(base, path, key, declared, signing)


def _token(env: Env, **claims: Any) -> str:
    now = int(time.time())
    body = {"iss": ISSUER, "sub": "alice", "azp": "support-app", "aud": f"{env.base}/mcp/scoped",
            "exp": now + 300, "iat": now, "groups": ["support"], **claims}
    return jwt.encode({"alg": "RS256", "kid": "k1"}, body, env.signing_key)


async def _call(env: Env, method: str, params: dict[str, Any], *, vs: str = "scoped", key: str | None = None,
                bearer: str | None = None) -> tuple[int, dict[str, str], dict[str, Any]]:
    headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream",
               "MCP-Protocol-Version": "2026-07-28", "Mcp-Method": method}
    if "name" in params:
        headers["Mcp-Name"] = params["name"]
    if key is not None:
        headers["X-API-Key"] = key
    if bearer is not None:
        headers["Authorization"] = f"Bearer {bearer}"
    body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": {**params, "_meta": META}}
    async with aiohttp.ClientSession() as http, http.post(f"{env.base}/mcp/{vs}", json=body, headers=headers) as r:
        return r.status, dict(r.headers), await r.json(content_type=None)


async def _tools(env: Env, **cred: Any) -> list[str]:
    status, _, body = await _call(env, "tools/list", {}, **cred)
    assert status == 200, body
    return [t["name"] for t in body["result"]["tools"]]


async def test_a_request_without_credentials_gets_401_with_a_resource_metadata_challenge(env: Env) -> None:
    status, headers, _ = await _call(env, "tools/list", {})
    assert status == 401
    challenge = headers["WWW-Authenticate"]
    assert f'resource_metadata="{env.base}/.well-known/oauth-protected-resource/mcp/scoped"' in challenge
    assert 'scope="mcp:tools"' in challenge
    url = f"{env.base}/.well-known/oauth-protected-resource/mcp/scoped"
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        meta = await resp.json()
    assert meta["resource"] == f"{env.base}/mcp/scoped"
    assert meta["authorization_servers"] == [ISSUER]


async def test_a_virtual_server_with_auth_none_stays_anonymous(env: Env) -> None:
    assert "notes__delete_note" in await _tools_open(env)


async def _tools_open(env: Env) -> list[str]:
    status, _, body = await _call(env, "tools/list", {}, vs="open")
    assert status == 200
    return [t["name"] for t in body["result"]["tools"]]


@pytest.mark.parametrize("key", ["stile_0000000000000000_" + "x" * 43, "not-a-key", ""])
async def test_an_unknown_or_malformed_key_is_refused(env: Env, key: str) -> None:
    status, _, _ = await _call(env, "tools/list", {}, key=key)
    assert status == 401


async def test_a_role_sees_only_its_grants_and_deny_wins(env: Env) -> None:
    names = await _tools(env, key=env.support_key)
    assert "notes__add_note" in names and "notes__list_notes" in names
    assert "notes__delete_note" not in names  # denied by the role
    assert not [n for n in names if n.startswith("files__")]  # not granted


async def test_a_read_only_role_gets_only_tools_annotated_read_only(env: Env) -> None:
    names = await _tools(env, key=env.declared_key)
    assert set(names) == {"notes__list_notes", "notes__get_note", "files__list_files", "files__read_file",
                          "files__read_env"}


async def test_calling_a_hidden_tool_answers_exactly_like_an_unknown_tool(env: Env) -> None:
    _, _, hidden = await _call(env, "tools/call", {"name": "notes__delete_note", "arguments": {"note_id": 1}},
                               key=env.support_key)
    _, _, unknown = await _call(env, "tools/call", {"name": "notes__no_such_tool", "arguments": {"note_id": 1}},
                                key=env.support_key)
    assert hidden["error"]["code"] == unknown["error"]["code"] == -32602
    assert hidden["error"]["message"].replace("notes__delete_note", "X") == \
        unknown["error"]["message"].replace("notes__no_such_tool", "X")


async def test_a_per_argument_rule_denies_with_its_reason_and_allows_otherwise(env: Env) -> None:
    _, _, denied = await _call(env, "tools/call", {"name": "notes__add_note",
                                                   "arguments": {"title": "far too long a title", "text": "x"}},
                               key=env.support_key)
    assert denied["error"]["code"] == -32010
    assert "titles must be short" in denied["error"]["message"]
    assert "size(" not in str(denied)  # the expression never leaks
    _, _, allowed = await _call(env, "tools/call", {"name": "notes__add_note",
                                                    "arguments": {"title": "short", "text": "x"}},
                                key=env.support_key)
    assert allowed["result"]["isError"] is False


async def test_a_shadow_rule_only_records_and_never_denies(env: Env) -> None:
    _, _, body = await _call(env, "tools/call", {"name": "notes__get_note", "arguments": {"note_id": 1}},
                             key=env.support_key)
    assert body["result"]["isError"] is False


async def test_a_jwt_from_the_configured_issuer_is_mapped_to_roles(env: Env) -> None:
    names = await _tools(env, bearer=_token(env))
    assert "notes__add_note" in names and "notes__delete_note" not in names


@pytest.mark.parametrize("claims", [
    {"aud": "http://127.0.0.1:1/mcp/other"},  # a token for another resource
    {"exp": int(time.time()) - 600},
    {"iss": "https://idp.test.evil"},
])
async def test_a_jwt_for_another_audience_or_expired_or_foreign_is_refused(env: Env, claims: dict[str, Any]) -> None:
    status, headers, _ = await _call(env, "tools/list", {}, bearer=_token(env, **claims))
    assert status == 401
    assert 'error="invalid_token"' in headers["WWW-Authenticate"]


async def test_a_token_without_the_required_scopes_gets_403_insufficient_scope(env: Env) -> None:
    aud = f"{env.base}/mcp/stepup"
    status, headers, _ = await _call(env, "tools/list", {}, vs="stepup",
                                     bearer=_token(env, aud=aud, scope="mcp:tools"))
    assert status == 403
    challenge = headers["WWW-Authenticate"]
    assert 'error="insufficient_scope"' in challenge and 'scope="mcp:tools notes:write"' in challenge
    assert f'resource_metadata="{env.base}/.well-known/oauth-protected-resource/mcp/stepup"' in challenge
    status, _, _ = await _call(env, "tools/list", {}, vs="stepup",
                               bearer=_token(env, aud=aud, scope="mcp:tools notes:write", groups=["reader"]))
    assert status == 200


async def test_a_principal_without_a_role_for_the_virtual_server_gets_403(env: Env) -> None:
    status, _, _ = await _call(env, "tools/list", {}, bearer=_token(env, groups=["nobody"]))
    assert status == 403


async def test_a_legacy_session_cannot_be_used_by_another_principal(env: Env) -> None:
    init = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}}
    hdrs = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
    ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{env.base}/mcp/scoped", json=init, headers={**hdrs, "X-API-Key": env.support_key}) as r:
            sid = r.headers["mcp-session-id"]
        same = {**hdrs, "Mcp-Session-Id": sid, "X-API-Key": env.support_key}
        other = {**hdrs, "Mcp-Session-Id": sid, "X-API-Key": env.declared_key}
        async with http.post(f"{env.base}/mcp/scoped", json=ping, headers=same) as r:
            assert r.status == 200
        async with http.post(f"{env.base}/mcp/scoped", json=ping, headers=other) as r:
            assert r.status == 404


async def test_a_session_owner_is_not_confused_by_colons_in_claims(env: Env) -> None:
    """azp `a:b` + sub `c` and azp `a` + sub `b:c` are two principals, whatever the encoding of the owner."""
    init = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}}
    hdrs = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
    first = {**hdrs, "Authorization": f"Bearer {_token(env, azp='a:b', sub='c')}"}
    second = {**hdrs, "Authorization": f"Bearer {_token(env, azp='a', sub='b:c')}"}
    ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{env.base}/mcp/scoped", json=init, headers=first) as r:
            assert r.status == 200
            sid = r.headers["mcp-session-id"]
        async with http.post(f"{env.base}/mcp/scoped", json=ping, headers={**first, "Mcp-Session-Id": sid}) as r:
            assert r.status == 200
        async with http.post(f"{env.base}/mcp/scoped", json=ping, headers={**second, "Mcp-Session-Id": sid}) as r:
            assert r.status == 404


async def test_a_revoked_key_is_refused_on_the_next_request(env: Env) -> None:
    key = _stile_cli("keys", "create", "--config", str(env.config), "--name", "short-lived", "--roles", "support")
    assert await _tools(env, key=key)
    _stile_cli("keys", "revoke", "--config", str(env.config), "short-lived")
    status, _, _ = await _call(env, "tools/list", {}, key=key)
    assert status == 401


async def test_the_client_credentials_never_reach_an_upstream(tmp_path: Path) -> None:
    key = "stile_gitops_" + secrets.token_urlsafe(32)
    with counting_upstream() as up:
        config = {
            "state": f"sqlite:///{tmp_path / 'state.db'}",
            "auth": {"keys": [{"name": "bot", "hash": hash_for_config(key), "roles": ["all"]}]},
            "roles": {"all": {"allow_tools": ["count.*"]}},
            "upstreams": {"count": {"url": f"{up}/mcp"}},
            "virtual_servers": {"v": {}},
        }
        with stile_server(config) as base:
            headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream",
                       "Authorization": f"Bearer {key}", "Cookie": "session=secret"}
            init = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
                "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}}
            call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                    "params": {"name": "count__echo", "arguments": {"text": "hi"}}}
            async with aiohttp.ClientSession() as http:
                async with http.post(f"{base}/mcp/v", json=init, headers=headers) as r:
                    sid = r.headers["mcp-session-id"]
                async with http.post(f"{base}/mcp/v", json=call, headers={**headers, "Mcp-Session-Id": sid}) as r:
                    assert (await r.json(content_type=None))["result"]["isError"] is False
                async with http.get(f"{up}/stats") as r:
                    stats = await r.json()
    assert stats.get("tools/call", 0) >= 1
    assert not [k for k in stats if k.startswith("header:")], stats


async def test_a_configured_issuer_audience_replaces_the_canonical_url(tmp_path: Path) -> None:
    signing = RSAKey.generate_key(2048, parameters={"kid": "k1"})
    with notes_upstream() as notes_url:
        config = {
            "state": f"sqlite:///{tmp_path / 'state.db'}",
            "auth": {"jwt": [{"issuer": ISSUER, "audience": "api://stile",
                              "jwks": {"keys": [signing.as_dict(private=False)]}}]},
            "roles": {"support": {"allow_tools": ["notes.*"]}},
            "upstreams": {"notes": {"url": notes_url}},
            "virtual_servers": {"scoped": {}},
        }
        with stile_server(config) as base:
            env = Env(base, tmp_path / "unused.yaml", "", "", signing)
            good = _token(env, aud="api://stile")
            default = _token(env)  # aud = the canonical URL, which the configured audience replaces
            assert (await _call(env, "tools/list", {}, bearer=good))[0] == 200
            assert (await _call(env, "tools/list", {}, bearer=default))[0] == 401
