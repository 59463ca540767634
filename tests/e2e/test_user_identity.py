"""Per-user identity to upstreams end to end: `token_exchange` (RFC 8693) and `user_oauth` (code + PKCE).

Real parts on loopback: the test authorization server (tests/fixtures/oauth_as.py: JWTs, RFC 8693, auth code
+ PKCE, rotating refresh tokens), an SDK upstream that verifies every bearer against it and reports who called
(tests/fixtures/oauth_upstream.py), Stile, official SDK clients in both eras, and a test user agent (an HTTP
client with its own cookie jar, following redirects, "logged in" at the AS as one user, which auto-approves).
Upstream `tx` uses token_exchange, `uo` user_oauth (match_user on); both share the upstream process, whose
discovery calls get a service token from the vault. The last test greps all Stile wrote for the client
secret, the service token and every token the AS issued.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import httpx2
import pytest
import yaml
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.types import ElicitResult, TextContent

from stile.stores.keys import hash_for_config
from stile.vault.keyring import new_key_text
from tests.e2e.helpers import LEGACY_HEADERS, initialize_body, modern_headers, modern_meta
from tests.e2e.test_tracing import Collector
from tests.support import REPO, free_port, ready_process, stop, wait_http

MASTER = new_key_text()
CLIENT_ID = "stile-gw"
PUBLIC_ID = "stile-public"  # a public client: PKCE, no secret
CLIENT_SECRET = "cl1ent/" + secrets.token_urlsafe(18) + "+="
SERVICE_TOKEN = "svc-" + secrets.token_urlsafe(24)
URL_CAPS = {"elicitation": {"url": {}}}


@dataclass
class Env:
    base: str
    issuer: str
    upstream: str
    tmp: Path
    config: Path
    api_key: str
    collector: Collector
    replica_b: str
    seen: list[bytes] = field(default_factory=list)  # every byte a client got back from Stile
    incoming: set[str] = field(default_factory=set)  # every token a client presented to Stile

    @property
    def vs(self) -> str:
        return f"{self.base}/mcp/v"


def _cli(args: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "stile", *args], input=stdin, capture_output=True, text=True,
                          timeout=60, env={**os.environ, "STILE_MASTER_KEY": MASTER}, cwd=REPO)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("user-identity")
    port, port_b = free_port(), free_port()
    base = f"http://127.0.0.1:{port}"
    api_key = "stile_ops_" + secrets.token_urlsafe(24)
    replica_b = f"http://127.0.0.1:{port_b}"  # a second gateway on the same state (tests below start it)
    clients = {CLIENT_ID: {"secret": CLIENT_SECRET, "redirect_uris": [f"{base}/oauth/callback",
                                                                      f"{replica_b}/oauth/callback"]},
               PUBLIC_ID: {"secret": None, "redirect_uris": [f"{base}/oauth/callback"]}}
    collector = Collector()
    collector.thread.start()
    as_argv = [sys.executable, "-u", "-m", "tests.fixtures.oauth_as", "--port", "0", "--clients", json.dumps(clients)]
    with ready_process(as_argv, "authorization server") as as_port:
        issuer = f"http://127.0.0.1:{as_port}"
        up_argv = [sys.executable, "-u", "-m", "tests.fixtures.oauth_upstream", "--port", "0", "--issuer", issuer,
                   "--service-token", SERVICE_TOKEN]
        with ready_process(up_argv, "oauth upstream") as up_port:
            upstream = f"http://127.0.0.1:{up_port}"
            service = {"Authorization": "Bearer ${secret:upstream-service}"}
            config = {
                "state": f"sqlite:///{tmp / 'state.db'}",
                "public_url": base,
                "vault": {"cache_seconds": 0.2},
                "audit": {"jsonl": str(tmp / "audit.jsonl")},
                "tracing": {"enabled": True, "otlp_endpoint": collector.url},
                "auth": {"key_cache_seconds": 0,
                         "keys": [{"name": "ops", "hash": hash_for_config(api_key), "roles": ["user"]}],
                         "jwt": [{"issuer": issuer, "jwks_url": f"{issuer}/jwks"}]},
                "roles": {"user": {"allow_tools": ["tx.*", "uo.*", "pub.*", "bad.*", "old.*"]}},
                "upstreams": {
                    "tx": {"url": f"{upstream}/mcp", "headers": service, "identity": "token_exchange",
                           "token_exchange": {"token_endpoint": f"{issuer}/token", "client_id": CLIENT_ID,
                                              "client_secret": "${secret:as-client}", "scopes": ["notes:read"],
                                              "timeout": 1.0}},
                    "uo": {"url": f"{upstream}/mcp", "headers": service, "identity": "user_oauth",
                           "oauth": {"client_id": CLIENT_ID, "client_secret": "${secret:as-client}",
                                     "issuer": issuer, "scopes": ["notes:read"], "match_user": True}},
                    "old": {"url": f"{upstream}/mcp", "headers": service, "identity": "user_oauth", "era": "legacy",
                            "oauth": {"client_id": CLIENT_ID, "client_secret": "${secret:as-client}",
                                      "issuer": issuer}},  # spoken to as 2025-11-25 only: modern clients bridged
                    "pub": {"url": f"{upstream}/mcp", "headers": service, "identity": "user_oauth",
                            "oauth": {"client_id": PUBLIC_ID, "authorization_endpoint": f"{issuer}/authorize",
                                      "token_endpoint": f"{issuer}/token"}},  # configured: no discovery
                    "bad": {"url": f"{upstream}/mcp", "headers": service, "identity": "user_oauth",
                            "oauth": {"client_id": PUBLIC_ID, "resource_metadata": f"{issuer}/no-such-document"}},
                },
                "virtual_servers": {"v": {}},
            }
            path = tmp / "stile.yaml"
            path.write_text(yaml.safe_dump(config), encoding="utf-8")
            for name, value in (("as-client", CLIENT_SECRET), ("upstream-service", SERVICE_TOKEN)):
                done = _cli(["secrets", "set", name, "--config", str(path)], stdin=value)
                assert done.returncode == 0, done.stderr
            log = tmp / "stile.log"
            with log.open("wb") as logf:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "stile", "serve", "--config", str(path), "--port", str(port)],
                    stdout=logf, stderr=subprocess.STDOUT, cwd=REPO, env={**os.environ, "STILE_MASTER_KEY": MASTER})
                try:
                    wait_http(f"{base}/healthz", proc, log=log)
                    yield Env(base, issuer, upstream, tmp, path, api_key, collector, replica_b)
                finally:
                    stop(proc)
                    collector.server.shutdown()
                    collector.server.server_close()


async def _user_token(env: Env, user: str, at: str | None = None) -> str:
    aud = f"{at}/mcp/v" if at else env.vs
    async with aiohttp.ClientSession() as http, http.get(f"{env.issuer}/user-token",
                                                         params={"user": user, "aud": aud}) as r:
        token = str((await r.json())["access_token"])
    env.incoming.add(token)
    return token


async def _control(env: Env, **body: Any) -> None:
    async with aiohttp.ClientSession() as http, http.post(f"{env.issuer}/control", json=body) as r:
        assert r.status == 200


async def _as_stats(env: Env) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http, http.get(f"{env.issuer}/stats") as r:
        out: dict[str, Any] = await r.json()
    return out


async def _upstream_seen(env: Env) -> list[str]:
    async with aiohttp.ClientSession() as http, http.get(f"{env.upstream}/seen") as r:
        out: list[str] = await r.json()
    return out


async def _modern(env: Env, tool: str, user: str | None, *, caps: dict[str, Any] | None = None,
                  extra: dict[str, Any] | None = None, at: str | None = None) -> dict[str, Any]:
    cred = {"Authorization": f"Bearer {await _user_token(env, user, at)}"} if user else {"X-API-Key": env.api_key}
    meta = {**modern_meta(), "io.modelcontextprotocol/clientCapabilities": caps or {}}
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": tool, "arguments": {}, "_meta": meta, **(extra or {})}}
    async with aiohttp.ClientSession() as http, http.post(
            f"{at}/mcp/v" if at else env.vs, json=body, headers={**modern_headers("tools/call", tool), **cred}) as r:
        raw = await r.read()
    env.seen.append(raw)
    out: dict[str, Any] = json.loads(raw)
    return out


async def _legacy(env: Env, tool: str, user: str) -> dict[str, Any]:
    """A raw legacy client that declares no elicitation capability."""
    headers = {**LEGACY_HEADERS, "Authorization": f"Bearer {await _user_token(env, user)}"}
    call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": tool, "arguments": {}}}
    async with aiohttp.ClientSession() as http:
        async with http.post(env.vs, json=initialize_body(), headers=headers) as r:
            env.seen.append(await r.read())
            sid = r.headers["mcp-session-id"]
        async with http.post(env.vs, json=call, headers={**headers, "Mcp-Session-Id": sid}) as r:
            raw = await r.read()
    env.seen.append(raw)
    text = raw.decode()
    if text.startswith(("event:", "data:")):
        text = next(line[5:] for line in text.splitlines() if line.startswith("data:") and '"id":2' in line)
    out: dict[str, Any] = json.loads(text)
    return out


def _who(reply: dict[str, Any]) -> dict[str, Any]:
    assert "result" in reply, reply
    assert reply["result"].get("isError") is not True, reply
    out: dict[str, Any] = json.loads(reply["result"]["content"][0]["text"])
    return out


@asynccontextmanager
async def user_agent(env: Env, as_user: str) -> AsyncIterator[aiohttp.ClientSession]:
    """A browser logged in at the authorization server as `as_user` (its own cookie jar)."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
        async with browser.get(f"{env.issuer}/login", params={"user": as_user}) as r:
            assert r.status == 200
        yield browser


async def _approve(env: Env, url: str, as_user: str) -> tuple[int, str]:
    """Open a consent URL in a browser logged in as `as_user`, following redirects to the end."""
    assert url.startswith((f"{env.base}/oauth/consent/", f"{env.replica_b}/oauth/consent/")), url
    async with user_agent(env, as_user) as browser, browser.get(url) as r:
        body = await r.text()
        env.seen.append(body.encode())
        return r.status, body


def _consent_url(reply: dict[str, Any]) -> str:
    """The consent URL of an input_required result or a -32042 error."""
    if "error" in reply:
        assert reply["error"]["code"] == -32042, reply
        return str(reply["error"]["data"]["elicitations"][0]["url"])
    res = reply["result"]
    assert res["resultType"] == "input_required", reply
    req = res["inputRequests"]["consent"]
    assert req["method"] == "elicitation/create" and req["params"]["mode"] == "url"
    return str(req["params"]["url"])


def _sdk_client(env: Env, token: str, mode: str, as_user: str, consented: list[str]) -> Client:
    async def on_elicitation(ctx: Any, params: Any) -> ElicitResult:
        assert getattr(params, "mode", None) == "url", params
        status, _ = await _approve(env, params.url, as_user)
        consented.append(f"{status}")
        return ElicitResult(action="accept" if status == 200 else "decline")

    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=30.0)
    return Client(streamable_http_client(env.vs, http_client=http), mode=mode,  # type: ignore[arg-type]
                  elicitation_callback=on_elicitation)  # type: ignore[arg-type]


def _text(result: Any) -> dict[str, Any]:
    block = result.content[0]
    assert isinstance(block, TextContent), result
    assert not result.is_error, block.text
    out: dict[str, Any] = json.loads(block.text)
    return out


async def _audit(env: Env, user: str, tool: str, count: int = 1, *,
                 with_identity: bool = True) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 15
    path = env.tmp / "audit.jsonl"
    while True:
        lines = path.read_text().splitlines() if path.exists() else []
        got = [e for e in map(json.loads, lines) if (e.get("principal") or {}).get("user") == user
               and e.get("tool") == tool and (e.get("identity") or not with_identity)]
        if len(got) >= count or time.monotonic() > deadline:
            return got
        await asyncio.sleep(0.05)  # waiting for the audit writer, with a deadline


# --- token exchange ------------------------------------------------------------------------------------------


async def test_token_exchange_each_user_reaches_the_upstream_as_themselves_in_both_eras(env: Env) -> None:
    seen: dict[str, set[str]] = {"alice": set(), "bob": set()}
    for call in (_modern, _legacy):
        for user in ("alice", "bob"):
            got = _who(await call(env, "tx__whoami", user))
            assert got["sub"] == user
            assert got["act"] == {"sub": CLIENT_ID}  # exchanged by Stile, for the upstream's audience
            assert got["aud"] == f"{env.upstream}/mcp"
            seen[user].add(got["jti_hash"])
    assert len(seen["alice"]) == len(seen["bob"]) == 1 and seen["alice"] != seen["bob"]  # cached per user
    events = await _audit(env, "alice", "tx__whoami", 2)
    assert [e["identity"] for e in events[-2:]] == [{"upstream": "tx", "mode": "token_exchange", "subject": "alice",
                                                     "token_id": next(iter(seen["alice"]))}] * 2


async def test_token_exchange_is_cached_per_user_until_near_expiry(env: Env) -> None:
    first = _who(await _modern(env, "tx__whoami", "carol"))
    before = (await _as_stats(env))["token_exchange"]
    again = _who(await _modern(env, "tx__whoami", "carol"))  # a new incoming token, same user: cached
    assert again["jti_hash"] == first["jti_hash"]
    assert (await _as_stats(env))["token_exchange"] == before
    other = _who(await _modern(env, "tx__whoami", "dave"))
    assert other["sub"] == "dave" and (await _as_stats(env))["token_exchange"] == before + 1
    events = await _audit(env, "carol", "tx__whoami", 2)
    assert {e["identity"]["token_id"] for e in events} == {first["jti_hash"]}  # the audit joins the upstream's log


@pytest.mark.parametrize(("fail", "expect"), [("down", "HTTP 503"), ("garbage", "not JSON"),
                                              ("slow", "no answer within 1s")])
async def test_token_exchange_failures_are_clear_errors_naming_the_upstream(env: Env, fail: str,
                                                                            expect: str) -> None:
    await _control(env, fail=fail)
    try:
        reply = await _modern(env, "tx__whoami", f"fail-{fail}")  # a user with nothing cached
    finally:
        await _control(env, fail=None)
    error = reply["error"]
    assert "upstream 'tx'" in error["message"] and expect in error["message"], error
    assert "eyJ" not in json.dumps(reply) and CLIENT_SECRET not in json.dumps(reply)


async def test_token_exchange_needs_a_user_token_not_an_api_key(env: Env) -> None:
    reply = await _modern(env, "tx__whoami", None)
    assert "needs a caller signed in with a bearer token" in reply["error"]["message"]


# --- user OAuth: consent, both eras ---------------------------------------------------------------------------


async def test_legacy_sdk_client_answers_the_url_elicitation_and_the_call_succeeds(env: Env) -> None:
    token = await _user_token(env, "alice")
    env.incoming.add(token)
    consented: list[str] = []
    async with _sdk_client(env, token, "legacy", "alice", consented) as client:
        got = _text(await client.call_tool("uo__whoami", {}))
        assert consented == ["200"] and got["sub"] == "alice" and got["aud"] == f"{env.upstream}/mcp"
        again = _text(await client.call_tool("uo__whoami", {}))  # no second consent
        assert consented == ["200"] and again["sub"] == "alice"
    events = await _audit(env, "alice", "uo__whoami")
    assert events[-1]["identity"] == {"upstream": "uo", "mode": "user_oauth", "subject": "alice",
                                      "token_id": again["jti_hash"]}


async def test_modern_sdk_client_handles_input_required_and_the_call_succeeds(env: Env) -> None:
    token = await _user_token(env, "bob")
    consented: list[str] = []
    async with _sdk_client(env, token, "2026-07-28", "bob", consented) as client:
        got = _text(await client.call_tool("uo__whoami", {}))
    assert consented == ["200"] and got["sub"] == "bob"
    # and each user stays themselves: alice's grant (previous test) is not bob's
    assert _who(await _modern(env, "uo__whoami", "alice"))["sub"] == "alice"
    assert _who(await _legacy(env, "uo__whoami", "bob"))["sub"] == "bob"


async def test_a_modern_retry_sent_before_the_user_finished_waits_for_the_consent(env: Env) -> None:
    first = await _modern(env, "uo__whoami", "paula", caps=URL_CAPS)
    url, state = _consent_url(first), first["result"]["requestState"]
    resume = {"requestState": state, "inputResponses": {"consent": {"action": "accept"}}}
    retry = asyncio.create_task(_modern(env, "uo__whoami", "paula", caps=URL_CAPS, extra=resume))
    assert (await _approve(env, url, "paula"))[0] == 200  # the browser finishes while the retry is out
    assert _who(await retry)["sub"] == "paula"  # that one retry succeeds: it waited for the consent


async def test_a_client_without_url_elicitation_gets_an_error_carrying_the_consent_url(env: Env) -> None:
    links = []
    for call in (_legacy, _modern):
        reply = await call(env, "uo__whoami", "frank")
        assert reply["error"]["code"] == -32042
        links.append(_consent_url(reply))
        assert "upstream 'uo'" in reply["error"]["message"] and links[-1] in reply["error"]["message"]
        assert links[-1].startswith(f"{env.base}/oauth/consent/")
    events = await _audit(env, "frank", "uo__whoami", 2, with_identity=False)
    assert len(events) == 2 and all("has not authorized" in (e.get("reason") or "") for e in events)
    audit = (env.tmp / "audit.jsonl").read_text()
    assert not any(link.rsplit("/", 1)[1] in audit for link in links)  # the link is the user's alone


async def test_consent_for_a_legacy_upstream_reaches_a_modern_client_through_the_bridge(env: Env) -> None:
    first = await _modern(env, "old__whoami", "sam", caps=URL_CAPS)
    assert (await _approve(env, _consent_url(first), "sam"))[0] == 200
    resume = {"requestState": first["result"]["requestState"], "inputResponses": {"consent": {"action": "accept"}}}
    assert _who(await _modern(env, "old__whoami", "sam", caps=URL_CAPS, extra=resume))["sub"] == "sam"
    assert _who(await _legacy(env, "old__whoami", "sam"))["sub"] == "sam"


async def test_a_public_client_with_configured_endpoints_works_the_same(env: Env) -> None:
    url = _consent_url(await _modern(env, "pub__whoami", "nina", caps=URL_CAPS))
    assert (await _approve(env, url, "nina"))[0] == 200
    got = _who(await _legacy(env, "pub__whoami", "nina"))
    assert got["sub"] == "nina" and got["aud"] == f"{env.upstream}/mcp"


async def test_a_discovery_failure_is_a_clear_error_not_a_dead_consent_link(env: Env) -> None:
    for call in (_modern, _legacy):
        reply = await call(env, "bad__whoami", "oscar")
        message = reply["error"]["message"]
        assert "upstream 'bad': OAuth discovery failed: protected resource metadata answered HTTP 404" in message


async def test_tokens_are_refreshed_near_expiry_and_on_a_401(env: Env) -> None:
    await _control(env, access_ttl=5)  # under refresh_margin (30 s): every use refreshes first
    try:
        url = _consent_url(await _modern(env, "uo__whoami", "carol", caps=URL_CAPS))
        assert (await _approve(env, url, "carol"))[0] == 200
        before = (await _as_stats(env))["refresh_token"]
        one = _who(await _modern(env, "uo__whoami", "carol"))
        two = _who(await _legacy(env, "uo__whoami", "carol"))
        assert one["sub"] == two["sub"] == "carol" and one["jti_hash"] != two["jti_hash"]
        assert (await _as_stats(env))["refresh_token"] >= before + 2  # rotating refresh tokens, each used once
    finally:
        await _control(env, access_ttl=3600)
    fresh = _who(await _modern(env, "uo__whoami", "carol"))  # refreshed once more: now a long-lived token
    await _control(env, revoke_sub="carol")  # the AS revokes every token it issued carol so far
    before = (await _as_stats(env))["refresh_token"]
    after = _who(await _modern(env, "uo__whoami", "carol"))  # 401 upstream -> refresh -> retried
    assert after["sub"] == "carol" and after["jti_hash"] != fresh["jti_hash"]
    assert (await _as_stats(env))["refresh_token"] == before + 1


async def test_an_authorization_server_outage_during_refresh_keeps_the_grant(env: Env) -> None:
    await _control(env, access_ttl=5)  # every use refreshes
    try:
        url = _consent_url(await _modern(env, "uo__whoami", "leo", caps=URL_CAPS))
        assert (await _approve(env, url, "leo"))[0] == 200
        await _control(env, fail="down")
        try:
            reply = await _modern(env, "uo__whoami", "leo")
        finally:
            await _control(env, fail=None)
        assert "upstream 'uo': refreshing the user's token" in reply["error"]["message"], reply
        assert "HTTP 503" in reply["error"]["message"]
        assert _who(await _modern(env, "uo__whoami", "leo"))["sub"] == "leo"  # the grant survived
        await _control(env, drop_refresh_of="leo")  # the refresh token is refused now: consent again
        assert (await _modern(env, "uo__whoami", "leo"))["error"]["code"] == -32042
    finally:
        await _control(env, access_ttl=3600)


async def test_revoke_user_makes_the_user_consent_again(env: Env) -> None:
    url = _consent_url(await _modern(env, "uo__whoami", "gina", caps=URL_CAPS))
    assert (await _approve(env, url, "gina"))[0] == 200
    assert _who(await _modern(env, "uo__whoami", "gina"))["sub"] == "gina"
    done = _cli(["secrets", "revoke-user", "gina", "--upstream", "uo", "--config", str(env.config)])
    assert done.returncode == 0 and "revoked 1" in done.stdout, done.stderr
    env.seen.append((done.stdout + done.stderr).encode())
    deadline = time.monotonic() + 15
    reply = await _modern(env, "uo__whoami", "gina")
    while "result" in reply and time.monotonic() < deadline:  # the gateway's copy lives vault.cache_seconds
        reply = await _modern(env, "uo__whoami", "gina")
    assert reply["error"]["code"] == -32042
    again = _cli(["secrets", "revoke-user", "gina", "--config", str(env.config)])
    assert again.returncode != 0 and "no OAuth tokens" in again.stderr


@contextmanager
def second_replica(env: Env) -> Iterator[subprocess.Popen[bytes]]:
    """Replica B: the same config and state store, its own port and public_url."""
    config = yaml.safe_load(env.config.read_text())
    config["public_url"] = env.replica_b
    config["audit"] = {"jsonl": str(env.tmp / "audit-b.jsonl")}
    path = env.tmp / "stile-b.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    port = urlsplit(env.replica_b).port
    with (env.tmp / "stile-b.log").open("ab") as logf:
        proc = subprocess.Popen(
            [sys.executable, "-m", "stile", "serve", "--config", str(path), "--port", str(port)],
            stdout=logf, stderr=subprocess.STDOUT, cwd=REPO, env={**os.environ, "STILE_MASTER_KEY": MASTER})
        try:
            wait_http(f"{env.replica_b}/healthz", proc, log=env.tmp / "stile-b.log")
            yield proc
        finally:
            stop(proc)


async def test_a_consent_completed_on_another_replica_wakes_the_waiting_legacy_call(env: Env) -> None:
    token = await _user_token(env, "quinn")
    consented: list[str] = []

    async def on_elicitation(ctx: Any, params: Any) -> ElicitResult:
        on_b = params.url.replace(env.base, env.replica_b)  # the load balancer sent the browser to replica B
        async with user_agent(env, "quinn") as browser, browser.get(on_b) as r:
            consented.append(f"{r.status}")
        return ElicitResult(action="accept")

    with second_replica(env):
        http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=30.0)
        async with Client(streamable_http_client(env.vs, http_client=http), mode="legacy",  # type: ignore[arg-type]
                          elicitation_callback=on_elicitation) as client:  # type: ignore[arg-type]
            got = _text(await client.call_tool("uo__whoami", {}))
    assert consented == ["200"] and got["sub"] == "quinn"


async def test_a_consent_link_survives_a_gateway_crash_and_restart(env: Env) -> None:
    with second_replica(env) as proc:
        link = _consent_url(await _modern(env, "uo__whoami", "rita", at=env.replica_b))
        assert link.startswith(f"{env.replica_b}/oauth/consent/")
        proc.kill()  # the worst moment: the link is out, the user has not opened it yet
        proc.wait(timeout=30)
    with second_replica(env):  # restarted: the link is sealed under a key in the vault, not in memory
        assert (await _approve(env, link, "rita"))[0] == 200
        assert _who(await _modern(env, "uo__whoami", "rita", at=env.replica_b))["sub"] == "rita"
    assert _who(await _modern(env, "uo__whoami", "rita"))["sub"] == "rita"  # and replica A uses the same grant
    status, body = await _approve(env, link.replace(env.replica_b, env.base), "rita")  # replayed on replica A
    assert status == 400 and "already used" in body  # single use is in the state store, not in one process


# --- attacks ----------------------------------------------------------------------------------------------------


async def test_another_user_approving_someones_consent_link_stores_nothing(env: Env) -> None:
    url = _consent_url(await _modern(env, "uo__whoami", "henry", caps=URL_CAPS))
    status, body = await _approve(env, url, "mallory")  # mallory got henry's link and approves as herself
    assert status == 403 and "Wrong account" in body
    assert (await _modern(env, "uo__whoami", "henry"))["error"]["code"] == -32042  # henry still has no grant
    status, body = await _approve(env, url, "henry")  # the link was single-use
    assert status == 400 and "already used" in body


async def test_a_state_from_another_browser_or_a_replayed_one_is_refused(env: Env) -> None:
    url = _consent_url(await _modern(env, "uo__whoami", "ivy", caps=URL_CAPS))
    async with user_agent(env, "ivy") as ivy:
        async with ivy.get(url, allow_redirects=False) as r:  # Stile -> the AS, with the sealed state
            assert r.status == 302
            to_as = r.headers["Location"]
        assert to_as.startswith(f"{env.issuer}/authorize?")
        async with ivy.get(to_as, allow_redirects=False) as r:  # the AS approves -> back to Stile's callback
            callback = r.headers["Location"]
        state = parse_qs(urlsplit(callback).query)["state"][0]
        async with user_agent(env, "mallory") as mallory:  # mallory presents ivy's state (and code)
            async with mallory.get(callback) as r:
                assert r.status == 400 and "another browser" in await r.text()
            async with mallory.get(f"{env.base}/oauth/callback", params={"state": state, "code": "x"}) as r:
                assert r.status == 400
        async with ivy.get(callback) as r:  # ivy's own browser completes it
            assert r.status == 200, await r.text()
        async with ivy.get(callback) as r:  # and cannot replay it
            assert r.status == 400 and "already used" in await r.text()
    assert _who(await _modern(env, "uo__whoami", "ivy"))["sub"] == "ivy"


async def test_the_consent_routes_never_redirect_anywhere_but_the_authorization_server(env: Env) -> None:
    async with aiohttp.ClientSession() as http:
        for path, params in (("/oauth/consent/" + "A" * 80, {}), ("/oauth/callback", {"state": "x", "code": "y",
                             "redirect_uri": "https://evil.example/", "next": "https://evil.example/"}),
                             ("/oauth/callback", {"error": "access_denied"}), ("/oauth/nope", {})):
            async with http.get(env.base + path, params=params, allow_redirects=False) as r:
                assert r.status in (400, 404), path
                assert "Location" not in r.headers
                env.seen.append(await r.read())
        async with http.post(f"{env.base}/oauth/callback", allow_redirects=False) as r:
            assert r.status == 405
        async with http.get(f"{env.base}/oauth/callback", params=[("state", "a"), ("state", "b")]) as r:
            assert r.status == 400 and "repeated" in await r.text()


async def _exercise(env: Env, user: str) -> None:
    """Both modes once for a fresh user (so the tests below stand alone too)."""
    assert _who(await _modern(env, "tx__whoami", user))["sub"] == user
    url = _consent_url(await _modern(env, "uo__whoami", user, caps=URL_CAPS))
    assert (await _approve(env, url, user))[0] == 200
    assert _who(await _legacy(env, "uo__whoami", user))["sub"] == user


async def test_no_incoming_token_ever_reaches_the_upstream(env: Env) -> None:
    await _exercise(env, "judy")
    seen = await _upstream_seen(env)
    assert len(seen) > 5
    sent = {h.removeprefix("Bearer ") for h in seen}
    assert env.incoming and not (env.incoming & sent)
    assert f"Bearer {SERVICE_TOKEN}" in seen  # discovery used the service identity...
    assert any(h.startswith("Bearer eyJ") for h in seen)  # ...tool calls the per-user tokens


async def test_nothing_stile_wrote_contains_the_client_secret_or_any_issued_token(env: Env) -> None:
    await _exercise(env, "kim")
    async with aiohttp.ClientSession() as http:
        for url in ("/metrics", "/readyz", "/admin/audit?limit=1000"):
            async with http.get(env.base + url, headers={"X-API-Key": env.api_key}) as r:
                env.seen.append(await r.read())
    for args in (["secrets", "list"], ["check"]):
        done = _cli([*args, "--config", str(env.config)])
        env.seen.append((done.stdout + done.stderr).encode())
    issued = (await _as_stats(env))["issued"]
    assert issued["refresh"] and issued["access"]
    needles = [CLIENT_SECRET, SERVICE_TOKEN, *issued["refresh"], *issued["access"], *env.incoming]
    written = [(env.tmp / "stile.log").read_bytes(), (env.tmp / "audit.jsonl").read_bytes(), *env.seen]
    written += [p.read_bytes() for p in env.tmp.glob("state.db*")]  # vault rows are envelope-encrypted
    written += [p.read_bytes() for p in env.tmp.rglob("audit-spool/**/*") if p.is_file()]
    written += [p.read_bytes() for p in (env.tmp / "stile-b.log", env.tmp / "audit-b.jsonl") if p.exists()]
    env.collector.wait_for(lambda spans: spans)  # traces were exported
    with env.collector.cond:
        written += [s.span.SerializeToString() for s in env.collector.spans]
    hits = [(n[:12], i) for n in needles for i, blob in enumerate(written) if n.encode() in blob]
    assert hits == []
