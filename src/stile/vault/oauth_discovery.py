"""RFC 9728 + RFC 8414 discovery for `identity: user_oauth`, as the MCP authorization spec describes.

The upstream's protected-resource metadata (`oauth.resource_metadata`, else
`/.well-known/oauth-protected-resource<path>` then without the path, at the upstream's origin), whose
`resource` must be the upstream's URL; then the metadata of its first authorization server (or of
`oauth.issuer`, which it must list)
(`/.well-known/oauth-authorization-server<path>`, else OpenID discovery with the path inserted, else
appended), whose `issuer` must match and which must list S256 PKCE and http(s) endpoints. No redirects are
followed; documents are capped (`oauth_http.MAX_BODY`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from stile.config.upstream_identity import UserOAuthConfig
from stile.vault.oauth_http import OAuthHttpError, get_json


@dataclass(frozen=True)
class Endpoints:
    authorization: str
    token: str


async def _first(http: aiohttp.ClientSession, urls: list[str], what: str, timeout: float) -> dict[str, Any]:
    last: OAuthHttpError | None = None
    for url in urls:
        try:
            return await get_json(http, url, timeout=timeout, what=what)
        except OAuthHttpError as exc:
            last = exc
    assert last is not None
    raise last


async def discover(http: aiohttp.ClientSession, url: str, cfg: UserOAuthConfig) -> Endpoints:
    """The authorization and token endpoints for the upstream at `url`; `OAuthHttpError` saying why not."""
    parts = urlsplit(url)
    origin, path = f"{parts.scheme}://{parts.netloc}", parts.path.rstrip("/")
    candidates = [cfg.resource_metadata] if cfg.resource_metadata else [
        f"{origin}/.well-known/oauth-protected-resource{path}", f"{origin}/.well-known/oauth-protected-resource"]
    prm = await _first(http, candidates, "protected resource metadata", cfg.timeout)
    if str(prm.get("resource", "")).rstrip("/") != url.rstrip("/"):
        raise OAuthHttpError("protected resource metadata names another resource")
    servers = prm.get("authorization_servers")
    if not isinstance(servers, list) or not servers or not isinstance(servers[0], str):
        raise OAuthHttpError("protected resource metadata lists no authorization server")
    listed = [str(s).rstrip("/") for s in servers]
    issuer = listed[0]
    if cfg.issuer is not None:
        if cfg.issuer.rstrip("/") not in listed:
            raise OAuthHttpError("protected resource metadata does not list the configured issuer")
        issuer = cfg.issuer.rstrip("/")
    ip = urlsplit(issuer)
    if ip.scheme not in ("http", "https") or not ip.netloc:
        raise OAuthHttpError("the authorization server is not an http(s) URL")
    io, ipath = f"{ip.scheme}://{ip.netloc}", ip.path.rstrip("/")
    meta = await _first(http, [f"{io}/.well-known/oauth-authorization-server{ipath}",
                               f"{io}/.well-known/openid-configuration{ipath}",
                               f"{issuer}/.well-known/openid-configuration"],
                        "authorization server metadata", cfg.timeout)
    if str(meta.get("issuer", "")).rstrip("/") != issuer:
        raise OAuthHttpError("authorization server metadata names another issuer")
    methods = meta.get("code_challenge_methods_supported")
    if not isinstance(methods, list) or "S256" not in methods:
        raise OAuthHttpError("the authorization server does not support PKCE S256")
    auth, token = meta.get("authorization_endpoint"), meta.get("token_endpoint")
    for value in (auth, token):
        if not isinstance(value, str) or urlsplit(value).scheme not in ("http", "https"):
            raise OAuthHttpError("authorization server metadata lacks http(s) endpoints")
    assert isinstance(auth, str) and isinstance(token, str)
    return Endpoints(auth, token)
