"""RFC 9728 + RFC 8414 discovery of `identity: user_oauth`, against real HTTP documents on loopback."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from stile.config.upstream_identity import UserOAuthConfig
from stile.vault.keyring import Keyring
from stile.vault.store import SecretStore
from stile.vault.user_oauth import UserOAuth
from stile.wire.errors import UpstreamUnavailable

Docs = dict[str, Any]


@pytest.fixture
async def server() -> AsyncIterator[tuple[str, Docs]]:
    """Serves whatever JSON `docs[path]` holds (404 otherwise)."""
    docs: Docs = {}

    async def any_path(request: web.Request) -> web.StreamResponse:
        if request.path not in docs:
            return web.Response(status=404)
        value = docs[request.path]
        return web.json_response(value) if not isinstance(value, bytes) else web.Response(body=value)

    app = web.Application()
    app.router.add_get("/{tail:.*}", any_path)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}", docs
    finally:
        await runner.cleanup()


def _as_meta(base: str, **over: Any) -> dict[str, Any]:
    issuer = base
    return {"issuer": issuer, "authorization_endpoint": f"{issuer}/authorize", "token_endpoint": f"{issuer}/token",
            "code_challenge_methods_supported": ["S256"], **over}


async def _discover(tmp: Path, url: str, **cfg: Any) -> Any:
    store = SecretStore(f"sqlite:///{tmp / 's.db'}", Keyring(secrets.token_bytes(32)))
    oauth = UserOAuth({"up": (url, UserOAuthConfig(client_id="gw", **cfg))}, store, lambda u, v: v, 1.0)
    try:
        return await oauth.endpoints("up")
    finally:
        await oauth.aclose()
        await store.aclose()


async def test_path_specific_metadata_then_the_authorization_server_metadata(tmp_path: Path,
                                                                            server: tuple[str, Docs]) -> None:
    base, docs = server
    issuer = f"{base}/tenant"
    docs["/.well-known/oauth-protected-resource/mcp"] = {"resource": f"{base}/mcp", "authorization_servers": [issuer]}
    docs["/.well-known/oauth-authorization-server/tenant"] = _as_meta(issuer)
    got = await _discover(tmp_path, f"{base}/mcp")
    assert (got.authorization, got.token) == (f"{issuer}/authorize", f"{issuer}/token")


async def test_root_metadata_and_openid_discovery_are_the_fallbacks(tmp_path: Path, server: tuple[str, Docs]) -> None:
    base, docs = server
    docs["/.well-known/oauth-protected-resource"] = {"resource": f"{base}/mcp", "authorization_servers": [base]}
    docs["/.well-known/openid-configuration"] = _as_meta(base)
    assert (await _discover(tmp_path, f"{base}/mcp")).token == f"{base}/token"


@pytest.mark.parametrize(("prm", "meta", "why"), [
    ({"resource": "http://elsewhere/mcp"}, None, "names another resource"),
    ({"authorization_servers": []}, None, "lists no authorization server"),
    ({"authorization_servers": ["javascript:alert(1)"]}, None, "not an http"),
    ({}, {"issuer": "http://evil.example"}, "names another issuer"),
    ({}, {"code_challenge_methods_supported": ["plain"]}, "does not support PKCE S256"),
    ({}, {"code_challenge_methods_supported": None}, "does not support PKCE S256"),
    ({}, {"token_endpoint": "file:///etc/passwd"}, "lacks http(s) endpoints"),
])
async def test_metadata_that_does_not_fit_is_refused(tmp_path: Path, server: tuple[str, Docs], prm: dict[str, Any],
                                                    meta: dict[str, Any] | None, why: str) -> None:
    base, docs = server
    docs["/.well-known/oauth-protected-resource/mcp"] = {"resource": f"{base}/mcp", "authorization_servers": [base],
                                                        **prm}
    docs["/.well-known/oauth-authorization-server"] = _as_meta(base, **(meta or {}))
    with pytest.raises(UpstreamUnavailable, match="OAuth discovery failed") as got:
        await _discover(tmp_path, f"{base}/mcp")
    assert why in got.value.message


async def test_the_configured_issuer_must_be_listed_and_is_the_one_used(tmp_path: Path,
                                                                       server: tuple[str, Docs]) -> None:
    base, docs = server
    other = f"{base}/other"
    docs["/.well-known/oauth-protected-resource/mcp"] = {"resource": f"{base}/mcp",
                                                        "authorization_servers": [f"{base}/evil", other]}
    docs["/.well-known/oauth-authorization-server/other"] = _as_meta(other)
    assert (await _discover(tmp_path, f"{base}/mcp", issuer=other)).token == f"{other}/token"
    with pytest.raises(UpstreamUnavailable, match="does not list the configured issuer"):
        await _discover(tmp_path, f"{base}/mcp", issuer=f"{base}/mine")


async def test_oversized_or_non_json_documents_are_refused(tmp_path: Path, server: tuple[str, Docs]) -> None:
    base, docs = server
    docs["/.well-known/oauth-protected-resource/mcp"] = b"x" * (70 * 1024)
    with pytest.raises(UpstreamUnavailable, match="larger than"):
        await _discover(tmp_path, f"{base}/mcp", resource_metadata=f"{base}/.well-known/oauth-protected-resource/mcp")
    docs["/prm"] = b"<html>"
    with pytest.raises(UpstreamUnavailable, match="not JSON"):
        await _discover(tmp_path, f"{base}/mcp", resource_metadata=f"{base}/prm")


async def test_configured_endpoints_skip_discovery(tmp_path: Path) -> None:
    got = await _discover(tmp_path, "http://127.0.0.1:9/mcp", authorization_endpoint="https://as/authorize",
                          token_endpoint="https://as/token")
    assert got.token == "https://as/token"
