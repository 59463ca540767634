"""Config and credential pieces of the per-caller identity modes (the flows themselves: tests/e2e)."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web

from stile.config.load import ConfigError, parse_config
from stile.config.upstream_identity import TokenExchangeConfig
from stile.config.warnings import config_warnings
from stile.upstreams.credentials import Caller
from stile.vault.credentials import VaultCredentials, needs_vault, references
from stile.vault.exchange import TokenExchanger
from stile.vault.keyring import Keyring
from stile.vault.store import SecretStore
from stile.wire.errors import UpstreamUnavailable
from tests.support import REPO

TX = {"token_endpoint": "http://127.0.0.1:9/token", "client_id": "gw", "client_secret": "${secret:idp}"}


def _cfg(**upstream: Any) -> Any:
    return parse_config({"upstreams": {"u": {"url": "http://127.0.0.1:9/mcp", **upstream}},
                         "virtual_servers": {"v": {}}})


def test_each_mode_needs_its_block_and_an_http_upstream() -> None:
    with pytest.raises(ConfigError, match="token_exchange and a `token_exchange:` block go together"):
        _cfg(identity="token_exchange")
    with pytest.raises(ConfigError, match="user_oauth and an `oauth:` block go together"):
        _cfg(oauth={"client_id": "gw"})
    with pytest.raises(ConfigError, match="needs a Streamable HTTP"):
        parse_config({"upstreams": {"u": {"command": ["x"], "identity": "passthrough"}}})
    with pytest.raises(ConfigError, match="a `client_secret` needs `issuer`"):
        _cfg(identity="user_oauth", oauth={"client_id": "gw", "client_secret": "${secret:a}"})
    with pytest.raises(ConfigError, match="both `authorization_endpoint` and `token_endpoint`"):
        _cfg(identity="user_oauth", oauth={"client_id": "gw", "token_endpoint": "https://as/token"})


def test_a_client_secret_must_be_a_vault_reference() -> None:
    with pytest.raises(ConfigError, match="must be a vault reference"):
        _cfg(identity="token_exchange", token_exchange={**TX, "client_secret": "literal-secret"})
    with pytest.raises(ConfigError, match="must be a vault reference"):
        _cfg(identity="user_oauth", oauth={"client_id": "gw", "client_secret": "x${secret:a}", "issuer": "https://a"})


def test_client_secrets_are_vault_references_that_open_the_vault() -> None:
    cfg = _cfg(identity="token_exchange", token_exchange=TX)
    assert references(cfg) == {"u": {"idp"}} and needs_vault(cfg)
    assert needs_vault(_cfg(identity="user_oauth", oauth={"client_id": "gw"}))


def test_passthrough_is_warned_about() -> None:
    warnings = config_warnings(_cfg(identity="passthrough"), "stile.yaml")
    assert any("identity: passthrough sends each caller's own token" in w for w in warnings)
    assert not any("passthrough" in w for w in config_warnings(_cfg(), "stile.yaml"))


@pytest.fixture
async def idp() -> AsyncIterator[tuple[str, list[dict[str, str]]]]:
    """A real HTTP token endpoint that counts requests and answers a fixed lifetime."""
    seen: list[dict[str, str]] = []

    async def token(request: web.Request) -> web.Response:
        form = dict(await request.post())
        seen.append({k: str(v) for k, v in form.items()})
        return web.json_response({"access_token": f"tok-{len(seen)}", "token_type": "Bearer", "expires_in": 100})

    app = web.Application()
    app.router.add_post("/token", token)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}/token", seen
    finally:
        await runner.cleanup()


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_exchanged_tokens_are_reused_until_the_margin_and_the_cache_is_bounded(
        idp: tuple[str, list[dict[str, str]]]) -> None:
    url, seen = idp
    clock = Clock()
    cfg = TokenExchangeConfig(token_endpoint=url, client_id="gw", client_secret="${secret:x}", scopes=["a", "b"],
                              reuse_margin=30, max_cached=2)
    ex = TokenExchanger("u", "http://up/mcp", cfg, clock)
    async with aiohttp.ClientSession() as http:
        first = await ex.token(http, "alice", "subject-1", "s3cret")
        assert (await ex.token(http, "alice", "subject-2", "s3cret")) == first and len(seen) == 1
        assert seen[0]["subject_token"] == "subject-1" and seen[0]["scope"] == "a b"
        assert seen[0]["audience"] == seen[0]["resource"] == "http://up/mcp"
        clock.now += 71  # 29 s left: under the margin
        assert (await ex.token(http, "alice", "subject-3", "s3cret"))[0] == "tok-2"
        await ex.token(http, "bob", "b", "s3cret")
        await ex.token(http, "carol", "c", "s3cret")  # alice is evicted (least recently used)
        assert len(ex._cache) == 2 and ex.cached("alice") is None


async def test_passthrough_and_modes_without_a_user_token(tmp_path: Path) -> None:
    store = SecretStore(f"sqlite:///{tmp_path / 's.db'}", Keyring(secrets.token_bytes(32)))
    cfg = parse_config({"upstreams": {"pt": {"url": "http://127.0.0.1:9/mcp", "identity": "passthrough",
                                             "headers": {"Authorization": "Bearer service"}},
                                      "tx": {"url": "http://127.0.0.1:9/mcp", "identity": "token_exchange",
                                             "token_exchange": TX},
                                      "uo": {"url": "http://127.0.0.1:9/mcp", "identity": "user_oauth",
                                             "oauth": {"client_id": "gw"}}},
                        "virtual_servers": {"v": {}}})
    creds = VaultCredentials(cfg, store)
    try:
        caller = Caller("alice", "app", token="incoming-jwt")
        await creds.prepare("pt", caller)
        assert creds.headers("pt", {"Authorization": "Bearer service"}, caller) == {
            "Authorization": "Bearer incoming-jwt"}
        assert caller.used is not None and caller.used["mode"] == "passthrough"
        assert creds.headers("pt", {"Authorization": "Bearer service"}) == {"Authorization": "Bearer service"}
        for upstream, why in (("pt", "needs a caller with a bearer token"), ("tx", "needs a caller signed in"),
                              ("uo", "needs a signed-in user")):
            with pytest.raises(UpstreamUnavailable, match=why):
                await creds.prepare(upstream, Caller(None, "key-agent"))
    finally:
        await creds.aclose()


def test_stile_check_warns_about_passthrough(tmp_path: Path) -> None:
    path = tmp_path / "stile.yaml"
    path.write_text(yaml.safe_dump({"upstreams": {"raw": {"url": "http://127.0.0.1:9/mcp", "identity": "passthrough"}},
                                    "virtual_servers": {"v": {}}}), encoding="utf-8")
    done = subprocess.run([sys.executable, "-m", "stile", "check", "--offline", "--config", str(path)],
                          capture_output=True, text=True, timeout=60, cwd=REPO, env={**os.environ, "COLUMNS": "300"})
    assert done.returncode == 0, done.stderr
    assert "upstreams.raw: identity: passthrough sends each caller's own token" in " ".join(done.stderr.split())
