"""The vault end to end: secrets in upstream headers, never leaked; identity assertions per caller; rotation
and master-key rewrap on a running gateway.

One gateway for the module, started with `STILE_MASTER_KEY=K2` and `STILE_MASTER_KEY_PREVIOUS=K1` (a rewrap
in progress) while the secret was stored under K1. The upstream (`tests/fixtures/credential_server.py`, the
real SDK) echoes the secret header it received in tool results and errors, and verifies identity assertions
against the gateway's own /.well-known/jwks.json. The last test greps every byte Stile wrote for the values.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import secrets
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import aiohttp
import pytest
import yaml
from joserfc import jwt
from joserfc.jwk import RSAKey

from stile.stores.keys import hash_for_config
from stile.vault.keyring import Keyring, key_id, new_key_text, parse_key
from stile.vault.store import SecretStore
from tests.e2e.helpers import LEGACY_HEADERS, initialize_body, modern_headers, modern_meta
from tests.e2e.test_tracing import Collector
from tests.support import REPO, free_port, ready_process, stop, wait_http

ISSUER = "https://idp.test"
K1, K2 = new_key_text(), new_key_text()
PLANTED = "pl@nted/" + secrets.token_urlsafe(18) + "+="
ROTATED = "r0tated/" + secrets.token_urlsafe(18) + "+="
CARELESS_STDIO = ("import os, runpy, sys; sys.stderr.write('token is ' + os.environ['TOKEN'] + '\\n'); "
                  "sys.stderr.flush(); runpy.run_module('stile.examples_servers.files_server', run_name='__main__')")


@dataclass
class Env:
    base: str
    tmp: Path
    config: Path
    admin_key: str
    idp: RSAKey
    collector: Collector
    seen: list[bytes] = field(default_factory=list)  # every byte a client got back from Stile


def _cli(args: list[str], *, stdin: str | None = None, master: str = K1) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "STILE_MASTER_KEY": master}
    full.pop("STILE_MASTER_KEY_PREVIOUS", None)
    return subprocess.run([sys.executable, "-m", "stile", *args], input=stdin, capture_output=True, text=True,
                          timeout=60, env=full, cwd=REPO)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("vault")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    idp = RSAKey.generate_key(2048, parameters={"kid": "idp"})
    admin_key = "stile_admin_" + secrets.token_urlsafe(32)
    argv = [sys.executable, "-u", "-m", "tests.fixtures.credential_server", "--port", "0",
            "--jwks", f"{base}/.well-known/jwks.json", "--issuer", base]
    collector = Collector()
    collector.thread.start()
    with ready_process(argv, "credential upstream") as up_port:
        up = f"http://127.0.0.1:{up_port}/mcp"
        config = {
            "state": f"sqlite:///{tmp / 'state.db'}",
            "public_url": base,
            "vault": {"cache_seconds": 0.2},
            "audit": {"jsonl": str(tmp / "audit.jsonl")},
            "tracing": {"enabled": True, "otlp_endpoint": collector.url},
            "auth": {"key_cache_seconds": 0,
                     "keys": [{"name": "ops", "hash": hash_for_config(admin_key), "roles": ["admin", "user"]}],
                     "jwt": [{"issuer": ISSUER, "jwks": {"keys": [idp.as_dict(private=False)]}}]},
            "roles": {"user": {"allow_tools": ["cred.*", "who.*", "files.*"]}, "admin": {"allow_tools": ["cred.*"]}},
            "upstreams": {"cred": {"url": up, "headers": {"X-Api-Token": "${secret:api-token}"}},
                          "who": {"url": up, "identity": "assertion"},
                          # a careless stdio server: prints its token to stderr (Stile copies stderr to its log)
                          "files": {"command": [sys.executable, "-c", CARELESS_STDIO],
                                    "env": {"TOKEN": "${secret:api-token}", "PYTHONPATH": str(REPO / "src")}}},
            "virtual_servers": {"v": {}},
        }
        path = tmp / "stile.yaml"
        path.write_text(yaml.safe_dump(config), encoding="utf-8")
        done = _cli(["secrets", "set", "api-token", "--config", str(path)], stdin=PLANTED + "\n")
        assert done.returncode == 0, done.stderr
        log = tmp / "stile.log"
        with log.open("wb") as logf:
            proc = subprocess.Popen(
                [sys.executable, "-m", "stile", "serve", "--config", str(path), "--port", str(port)],
                stdout=logf, stderr=subprocess.STDOUT, cwd=REPO,
                env={**os.environ, "STILE_MASTER_KEY": K2, "STILE_MASTER_KEY_PREVIOUS": K1})
            try:
                wait_http(f"{base}/healthz", proc, log=log)
                yield Env(base, tmp, path, admin_key, idp, collector)
            finally:
                stop(proc)
                collector.server.shutdown()
                collector.server.server_close()


def _token(env: Env, sub: str) -> str:
    now = int(time.time())
    claims = {"iss": ISSUER, "sub": sub, "azp": "chat-app", "aud": f"{env.base}/mcp/v", "exp": now + 300,
              "iat": now, "groups": ["user"]}
    return jwt.encode({"alg": "RS256", "kid": "idp"}, claims, env.idp)


def _cred(env: Env, user: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {_token(env, user)}"} if user else {"X-API-Key": env.admin_key}


async def _modern(env: Env, tool: str, user: str | None = None,
                  arguments: dict[str, Any] | None = None) -> dict[str, Any]:
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": tool, "arguments": arguments or {}, "_meta": modern_meta()}}
    async with aiohttp.ClientSession() as http, http.post(
            f"{env.base}/mcp/v", json=body, headers={**modern_headers("tools/call", tool), **_cred(env, user)}) as r:
        raw = await r.read()
    env.seen.append(raw)
    out: dict[str, Any] = json.loads(raw)
    return out


async def _legacy(env: Env, tool: str, user: str | None = None) -> dict[str, Any]:
    headers = {**LEGACY_HEADERS, **_cred(env, user)}
    call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": tool, "arguments": {}}}
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{env.base}/mcp/v", json=initialize_body(), headers=headers) as r:
            env.seen.append(await r.read())
            sid = r.headers["mcp-session-id"]
        async with http.post(f"{env.base}/mcp/v", json=call, headers={**headers, "Mcp-Session-Id": sid}) as r:
            raw = await r.read()
    env.seen.append(raw)
    text = raw.decode()
    if text.startswith("event:") or text.startswith("data:"):  # an SSE answer: the data line of the response
        text = next(line[5:] for line in text.splitlines() if line.startswith("data:") and '"id":2' in line)
    out: dict[str, Any] = json.loads(text)
    return out


def _text(reply: dict[str, Any]) -> dict[str, Any]:
    assert "result" in reply, reply
    assert reply["result"].get("isError") is not True, reply
    out: dict[str, Any] = json.loads(reply["result"]["content"][0]["text"])
    return out


def _sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def _forms(value: str) -> set[str]:
    raw = value.encode()
    forms = {value, quote(value, safe=""), quote_plus(value)}
    for enc in (base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode()):
        forms |= {enc, enc.rstrip("=")}
    return forms


async def test_a_tool_result_echoing_the_secret_header_is_scrubbed_in_both_eras(env: Env) -> None:
    for call in (_modern, _legacy):
        got = _text(await call(env, "cred__echo_token", "alice"))
        assert got["sha256"] == _sha(PLANTED)  # the upstream did receive the vault's value...
        assert got["raw"] == got["b64"] == got["url"] == "[secret]"  # ...and the client never sees it


async def test_a_stdio_upstream_gets_the_secret_in_its_env_and_its_echo_and_stderr_are_scrubbed(env: Env) -> None:
    reply = await _modern(env, "files__read_env", "alice", {"name": "TOKEN"})
    assert reply["result"]["content"][0]["text"] == "[secret]"  # resolved (a literal reference is not masked)
    log = (env.tmp / "stile.log").read_text()
    assert "upstream files stderr: token is [secret]" in log


async def test_an_upstream_error_echoing_the_secret_is_scrubbed(env: Env) -> None:
    reply = await _modern(env, "cred__fail_token", "alice")
    error = reply.get("error") or {}
    if not error:  # the SDK may turn the error into a tool result
        text = json.dumps(reply["result"])
        assert "[secret]" in text, reply
    else:
        assert "[secret]" in error["message"], reply
    assert not any(form in json.dumps(reply) for form in _forms(PLANTED)), reply


async def test_each_user_reaches_an_assertion_upstream_as_themselves_in_both_eras(env: Env) -> None:
    for call in (_modern, _legacy):
        for user in ("alice", "bob"):
            got = _text(await call(env, "who__whoami", user))
            assert got["sub"] == user
            assert got["act"] == {"sub": "chat-app"}
            assert got["exp_in"] == 60
    got = _text(await _modern(env, "who__whoami"))  # an API key without a user: the agent is the subject
    assert got["sub"] == "ops" and got["act"] is None


async def test_jwks_is_published_and_the_audit_records_the_identity_not_the_token(env: Env) -> None:
    async with aiohttp.ClientSession() as http, http.get(f"{env.base}/.well-known/jwks.json") as r:
        jwks = await r.json()
    assert [k["kty"] for k in jwks["keys"]] == ["EC"] and "d" not in jwks["keys"][0]
    got = _text(await _modern(env, "who__whoami", "carol"))
    cred = _text(await _modern(env, "cred__echo_token", "carol"))
    assert cred["raw"] == "[secret]"
    deadline = time.monotonic() + 15
    events: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        path = env.tmp / "audit.jsonl"
        lines = path.read_text().splitlines() if path.exists() else []
        events = [e for e in map(json.loads, lines) if (e.get("principal") or {}).get("user") == "carol"]
        if len(events) >= 2:
            break
        await asyncio.sleep(0.05)  # waiting for the audit writer, with a deadline
    by_tool = {e["tool"]: e for e in events}
    assert by_tool["who__whoami"]["identity"] == {"upstream": "who", "mode": "assertion", "subject": "carol",
                                                  "token_id": got["jti_hash"]}
    assert by_tool["cred__echo_token"]["identity"] == {"upstream": "cred", "mode": "service"}
    assert "eyJ" not in (env.tmp / "audit.jsonl").read_text()  # no JWT in the audit trail


async def test_a_rewrap_while_clients_call_fails_no_call(env: Env) -> None:
    stop_calls, enough_after = asyncio.Event(), asyncio.Event()
    results: list[bool] = []
    target = [10**9]

    async def caller() -> None:
        while not stop_calls.is_set():
            got = _text(await _modern(env, "cred__echo_token", "alice"))
            results.append(got["sha256"] == _sha(PLANTED))
            if len(results) >= target[0]:
                enough_after.set()

    task = asyncio.create_task(caller())
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "stile", "secrets", "rewrap", "--config", str(env.config), cwd=REPO,
        env={**{k: v for k, v in os.environ.items() if k != "STILE_MASTER_KEY_PREVIOUS"},
             "STILE_MASTER_KEY": K1, "STILE_NEW_MASTER_KEY": K2},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, errs = await proc.communicate()
    assert proc.returncode == 0, errs
    assert b"re-wrapped 1 data keys" in out  # the secret (the signing key was created under K2 already)
    target[0] = len(results) + 10  # calls across several refreshes after the rewrap
    async with asyncio.timeout(30):
        await enough_after.wait()
    stop_calls.set()
    await task
    assert results and all(results)
    assert b"vault refresh failed" not in (env.tmp / "stile.log").read_bytes()  # read every row, not a stale cache
    with sqlite3.connect(env.tmp / "state.db") as db:
        kids = {row[0] for row in db.execute("select key_id from stile_secrets")}
    assert kids == {key_id(parse_key(K2, "K2"))}
    store = SecretStore(f"sqlite:///{env.tmp / 'state.db'}", Keyring(parse_key(K2, "K2")))  # K1 no longer needed
    try:
        assert (await store.latest(["api-token"]))["api-token"] == PLANTED.encode()
    finally:
        await store.aclose()


async def test_a_rotated_header_secret_is_used_without_restart_and_scrubbed_too(env: Env) -> None:
    done = _cli(["secrets", "rotate", "api-token", "--config", str(env.config)], stdin=ROTATED, master=K2)
    assert done.returncode == 0, done.stderr
    deadline = time.monotonic() + 15
    got = _text(await _modern(env, "cred__echo_token", "alice"))
    while got["sha256"] != _sha(ROTATED) and time.monotonic() < deadline:
        got = _text(await _modern(env, "cred__echo_token", "alice"))
    assert got["sha256"] == _sha(ROTATED)
    assert got["raw"] == "[secret]"
    listing = _cli(["secrets", "list", "--config", str(env.config)], master=K2)
    assert "api-token" in listing.stdout and " 2 " in listing.stdout
    env.seen.append((listing.stdout + listing.stderr).encode())


async def test_a_signing_key_rotation_keeps_assertions_verifying(env: Env) -> None:
    before = _text(await _modern(env, "who__whoami", "dave"))["kid"]
    done = _cli(["secrets", "rotate-signing-key", "--config", str(env.config)], master=K2)
    assert done.returncode == 0, done.stderr
    deadline = time.monotonic() + 15
    got = _text(await _modern(env, "who__whoami", "erin"))
    while got["kid"] == before and time.monotonic() < deadline:
        got = _text(await _modern(env, "who__whoami", "erin"))
    assert got["kid"] != before and got["sub"] == "erin"
    async with aiohttp.ClientSession() as http, http.get(f"{env.base}/.well-known/jwks.json") as r:
        kids = [k["kid"] for k in (await r.json())["keys"]]
    assert kids[:2] == [got["kid"], before]  # the previous key stays published


async def test_nothing_stile_wrote_contains_a_secret_value_or_its_encodings(env: Env) -> None:
    async with aiohttp.ClientSession() as http:
        for url in ("/metrics", "/readyz", "/admin/audit?limit=1000", "/admin/usage"):
            async with http.get(env.base + url, headers={"X-API-Key": env.admin_key}) as r:
                assert r.status == 200, url
                env.seen.append(await r.read())
    check = _cli(["check", "--config", str(env.config)], master=K2)
    env.seen.append((check.stdout + check.stderr).encode())
    log = (env.tmp / "stile.log").read_bytes()
    assert b"vault" in log or b"Uvicorn" in log or log  # there is a log to search
    written = [log, (env.tmp / "audit.jsonl").read_bytes(), *env.seen]
    written += [p.read_bytes() for p in env.tmp.glob("state.db*")]  # the audit store (and the WAL)
    written += [p.read_bytes() for p in env.tmp.rglob("audit-spool/**/*") if p.is_file()]
    # the traces: the upstream error that echoed the secret is an error span, its status message scrubbed
    env.collector.wait_for(lambda spans: [s for s in spans if "[secret]" in s.span.status.message])
    with env.collector.cond:
        written += [s.span.SerializeToString() for s in env.collector.spans]
    assert len(env.seen) > 20
    hits = [(form, i) for value in (PLANTED, ROTATED) for form in _forms(value)
            for i, blob in enumerate(written) if form.encode() in blob]
    assert hits == []


def test_stile_check_probes_upstreams_with_the_vaults_secrets_not_the_literal_reference(tmp_path: Path) -> None:
    argv = [sys.executable, "-u", "-m", "tests.fixtures.credential_server", "--port", "0",
            "--require-token-sha256", _sha(PLANTED)]
    with ready_process(argv, "locked credential upstream") as up_port:
        config = {"state": f"sqlite:///{tmp_path / 'state.db'}",
                  "upstreams": {"locked": {"url": f"http://127.0.0.1:{up_port}/mcp",
                                           "headers": {"X-Api-Token": "${secret:api-token}"}}},
                  "virtual_servers": {"v": {"auth": "none"}}}
        path = tmp_path / "stile.yaml"
        path.write_text(yaml.safe_dump(config), encoding="utf-8")
        without_key = subprocess.run([sys.executable, "-m", "stile", "check", "--json", "--config", str(path)],
                                     capture_output=True, text=True, timeout=60, cwd=REPO,
                                     env={k: v for k, v in os.environ.items() if not k.startswith("STILE_MASTER")})
        assert without_key.returncode == 1
        refused = json.loads(without_key.stdout)
        assert refused["upstreams"]["locked"]["status"] == "not contacted"
        assert any(p.startswith("vault: ") for p in refused["problems"]), refused
        done = _cli(["secrets", "set", "api-token", "--config", str(path)], stdin=PLANTED + "\n")
        assert done.returncode == 0, done.stderr
        checked = _cli(["check", "--json", "--config", str(path)])
        assert checked.returncode == 0, checked.stdout + checked.stderr
        surface = json.loads(checked.stdout)
        assert surface["upstreams"]["locked"] == {"status": "ok", "error": None}
        assert "locked__echo_token" in {t["exposed"] for t in surface["virtual_servers"]["v"]["tools"]}
        assert not any(form in checked.stdout + checked.stderr for form in _forms(PLANTED))


def test_stile_check_scrubs_a_failing_stdio_upstreams_stderr_that_quotes_its_secret(tmp_path: Path) -> None:
    crash = "import os, sys; sys.stderr.write('bad token ' + os.environ['TOKEN'] + '\\n'); sys.exit(3)"
    config = {"state": f"sqlite:///{tmp_path / 'state.db'}",
              "upstreams": {"crash": {"command": [sys.executable, "-c", crash], "env": {"TOKEN": "${secret:tok}"}}},
              "virtual_servers": {"v": {"auth": "none"}}}
    path = tmp_path / "stile.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    assert _cli(["secrets", "set", "tok", "--config", str(path)], stdin=PLANTED + "\n").returncode == 0
    checked = _cli(["check", "--json", "--config", str(path)])
    assert checked.returncode == 1
    error = json.loads(checked.stdout)["upstreams"]["crash"]["error"]
    assert "bad token [secret]" in error, error  # the stderr tail is shown, the value is not
    assert not any(form in checked.stdout + checked.stderr for form in _forms(PLANTED))
