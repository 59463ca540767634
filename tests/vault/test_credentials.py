"""`VaultCredentials` with a real store: header and stdio env resolution, missing secrets, refresh."""

from __future__ import annotations

import secrets
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from stile.config.load import parse_config
from stile.upstreams.credentials import Caller
from stile.upstreams.factory import make_upstream
from stile.vault.credentials import VaultCredentials
from stile.vault.keyring import Keyring
from stile.vault.store import SecretStore
from stile.wire.errors import UpstreamUnavailable

KEY = secrets.token_bytes(32)
VALUE = "tok-" + secrets.token_urlsafe(16)


def _cfg(tmp: Path) -> dict[str, object]:
    return {
        "state": f"sqlite:///{tmp / 'state.db'}",
        "upstreams": {
            "api": {"url": "http://127.0.0.1:9/mcp", "headers": {"Authorization": "Bearer ${secret:api}",
                                                                 "X-Plain": "plain"}},
            "gone": {"url": "http://127.0.0.1:9/mcp", "headers": {"X-Key": "${secret:not-there}"}},
            "files": {"command": [sys.executable, "-m", "stile.examples_servers.files_server"],
                      "env": {"TOKEN": "${secret:api}", "FILES_ROOT": str(tmp)}},
        },
        "virtual_servers": {"v": {}},
    }


@pytest.fixture
async def creds(tmp_path: Path) -> AsyncIterator[VaultCredentials]:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    seed = SecretStore(url, Keyring(KEY))
    await seed.set("api", VALUE.encode())
    await seed.aclose()
    vc = VaultCredentials(parse_config(_cfg(tmp_path)), SecretStore(url, Keyring(KEY)))
    await vc.refresh()
    try:
        yield vc
    finally:
        await vc.aclose()


async def test_headers_are_resolved_from_the_cache_and_a_missing_secret_is_a_clear_error(
        creds: VaultCredentials) -> None:
    caller = Caller("alice", "app")
    got = creds.headers("api", {"Authorization": "Bearer ${secret:api}", "X-Plain": "plain"}, caller)
    assert got == {"Authorization": f"Bearer {VALUE}", "X-Plain": "plain"}
    assert caller.used == {"mode": "service"}
    with pytest.raises(UpstreamUnavailable, match="secret 'not-there' is not in the vault"):
        creds.headers("gone", {"X-Key": "${secret:not-there}"})


async def test_a_rotation_is_seen_at_the_next_refresh(creds: VaultCredentials) -> None:
    await creds.store.rotate("api", b"tok-rotated-value")
    assert creds.headers("api", {"A": "${secret:api}"}) == {"A": VALUE}  # cached until the refresh
    await creds.refresh()
    assert creds.headers("api", {"A": "${secret:api}"}) == {"A": "tok-rotated-value"}


async def test_a_stdio_upstream_gets_the_secret_in_its_env_and_its_echo_is_scrubbed(
        creds: VaultCredentials, tmp_path: Path) -> None:
    cfg = parse_config(_cfg(tmp_path))
    up = make_upstream("files", cfg.upstreams["files"], credentials=creds)
    try:
        await up.start()
        reply = await up.request("tools/call", {"name": "read_env", "arguments": {"name": "TOKEN"}})
    finally:
        await up.aclose()
    text = reply["result"]["content"][0]["text"]
    assert text == "[secret]"  # the value itself reached the process (the literal reference would not be masked)
    assert VALUE not in repr(reply)


def test_secret_references_stay_literal_through_config_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PLAIN_ENV", "from-env")
    data = _cfg(tmp_path)
    data["upstreams"]["api"]["headers"]["X-Plain"] = "${PLAIN_ENV}"  # type: ignore[index]
    cfg = parse_config(data)
    assert cfg.upstreams["api"].headers == {"Authorization": "Bearer ${secret:api}", "X-Plain": "from-env"}
    assert cfg.upstreams["files"].env["TOKEN"] == "${secret:api}"


def test_identity_assertion_needs_a_streamable_http_upstream() -> None:
    from stile.config.load import ConfigError

    for up in ({"command": ["x"], "identity": "assertion"},
               {"url": "http://h/sse", "transport": "sse", "identity": "assertion"}):
        with pytest.raises(ConfigError, match="identity: assertion needs a Streamable HTTP"):
            parse_config({"upstreams": {"u": up}})


def test_a_secret_reference_outside_upstream_headers_and_env_or_badly_named_is_a_config_error() -> None:
    from stile.config.load import ConfigError

    with pytest.raises(ConfigError, match=r"metrics.token: \$\{secret:...\} is only resolved in upstreams"):
        parse_config({"metrics": {"token": "${secret:metrics-token-xxxxxxxx}"}})
    with pytest.raises(ConfigError, match=r"upstreams.u.headers.X: bad secret name 'a b'"):
        parse_config({"upstreams": {"u": {"url": "http://h/mcp", "headers": {"X": "${secret:a b}"}}}})


async def test_replicas_starting_together_share_one_signing_key(tmp_path: Path) -> None:
    import asyncio

    cfg = parse_config({"state": f"sqlite:///{tmp_path / 'state.db'}", "virtual_servers": {"v": {}},
                        "upstreams": {"who": {"url": "http://127.0.0.1:9/mcp", "identity": "assertion"}}})
    url = f"sqlite:///{tmp_path / 'state.db'}"
    replicas = [VaultCredentials(cfg, SecretStore(url, Keyring(KEY))) for _ in range(3)]
    try:
        await asyncio.gather(*(r.refresh() for r in replicas))
        assert all(r.minter.ready for r in replicas)  # the losers of the creation race read the winner's key
        kids = {r.jwks()["keys"][0]["kid"] for r in replicas}
        assert len(kids) == 1 and all(len(r.jwks()["keys"]) == 1 for r in replicas)
        caller = Caller("alice", "app")
        headers = replicas[0].headers("who", {"Authorization": "Bearer client-token"}, caller)
        assert headers["Authorization"].startswith("Bearer ey") and "client-token" not in str(headers)
        assert caller.used is not None and caller.used["subject"] == "alice"
    finally:
        for r in replicas:
            await r.aclose()


CHATTY_STDIO = r"""
import json, os, sys
token = os.environ["TOKEN"]
def send(msg):
    sys.stdout.write(json.dumps(msg) + "\n"); sys.stdout.flush()
for line in sys.stdin:
    msg = json.loads(line)
    if msg.get("method") == "initialize":
        send({"jsonrpc": "2.0", "id": msg["id"], "result": {"protocolVersion": "2025-11-25",
              "capabilities": {"tools": {}}, "serverInfo": {"name": "chatty", "version": "1"}}})
    elif msg.get("method") == "tools/call":
        pt = msg["params"].get("_meta", {}).get("progressToken")
        send({"jsonrpc": "2.0", "method": "notifications/progress",
              "params": {"progressToken": pt, "progress": 1, "message": "using " + token}})
        send({"jsonrpc": "2.0", "method": "notifications/message",
              "params": {"level": "info", "data": {"token": token}}})
        send({"jsonrpc": "2.0", "method": "notifications/resources/updated", "params": {"uri": "x://" + token}})
        send({"jsonrpc": "2.0", "id": msg["id"], "result": {"content": [{"type": "text", "text": "done"}]}})
    elif "id" in msg and "method" in msg:
        send({"jsonrpc": "2.0", "id": msg["id"], "result": {}})
"""


async def test_a_stdio_upstreams_progress_log_and_unsolicited_notifications_are_scrubbed(
        creds: VaultCredentials, tmp_path: Path) -> None:
    from stile.upstreams.base import CallOptions
    from stile.wire.jsonrpc import Message

    data = _cfg(tmp_path)
    data["upstreams"]["chatty"] = {"command": [sys.executable, "-c", CHATTY_STDIO],  # type: ignore[index]
                                   "env": {"TOKEN": "${secret:api}"}}
    cfg = parse_config(data)
    vault = VaultCredentials(cfg, creds.store)  # the fixture's store (and its secret), this config's references
    await vault.refresh()
    up = make_upstream("chatty", cfg.upstreams["chatty"], credentials=vault)
    seen: list[Message] = []
    unsolicited: list[Message] = []

    async def on_message(msg: Message) -> None:
        seen.append(msg)

    up.on_notification = lambda method, msg: unsolicited.append(msg)
    try:
        await up.start()
        reply = await up.request("tools/call", {"name": "t", "arguments": {}, "_meta": {"progressToken": 7}},
                                 CallOptions(on_message=on_message, progress_token=7))
    finally:
        await up.aclose()
    assert reply["result"]["content"][0]["text"] == "done"
    methods = sorted(m["method"] for m in (*seen, *unsolicited))
    assert methods == ["notifications/message", "notifications/progress", "notifications/resources/updated"]
    assert "using [secret]" in repr(seen)
    assert VALUE not in repr(seen) + repr(unsolicited)
