"""OAuth 2.1 end to end: the official SDK client, Stile as resource server, a real authorization server.

The authorization server is npm `oauth2-mock-server` (tools/oauth, installed by tools/install-node.sh), run
by tests/e2e/oauth_server.mjs on 127.0.0.1: it signs RS256 access tokens whose `aud` is the token request's
RFC 8707 `resource` and whose `groups` is ["support"]. Stile trusts it through `jwks_url` (loopback http).
The SDK's `ClientCredentialsOAuthProvider` gets Stile's 401, follows `resource_metadata` to the protected
resource metadata, discovers the authorization server metadata, obtains a token with client_credentials,
and retries; every HTTP exchange is recorded through httpx2 event hooks so the order can be checked.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx2
import pytest
from mcp import Client
from mcp.client.auth.extensions.client_credentials import ClientCredentialsOAuthProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import OAuthClientInformationFull, OAuthToken

from tests.e2e.helpers import NODE, counting_upstream, modern_headers, modern_meta, upstream_counts
from tests.support import REPO, free_port, missing_files, notes_upstream, ready_process, stile_server

OAUTH_SERVER_MJS = REPO / "tests" / "e2e" / "oauth_server.mjs"
OAUTH_PACKAGE = REPO / "tools" / "oauth" / "node_modules" / "oauth2-mock-server" / "package.json"
VS = "agents"
OTHER_VS = "other"
CLIENT_ID = "support-bot"
CLIENT_SECRET = "not-a-real-secret"


def _oauth_missing() -> str | None:
    return missing_files(NODE, OAUTH_PACKAGE, OAUTH_SERVER_MJS)


@contextmanager
def oauth_server(deadline_s: float = 30.0) -> Iterator[str]:
    """Run tests/e2e/oauth_server.mjs on a free loopback port; yield its issuer URL."""
    with ready_process([str(NODE), str(OAUTH_SERVER_MJS), "0"], "oauth server", deadline_s=deadline_s) as port:
        yield f"http://127.0.0.1:{port}"


@dataclass
class Env:
    base: str  # Stile
    issuer: str  # the authorization server
    counter: str  # the counting upstream's base URL (GET /stats)

    @property
    def resource(self) -> str:
        return f"{self.base}/mcp/{VS}"


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    missing = _oauth_missing()
    if missing is not None:  # `make test` and CI install the tools: a missing one is a failure, not a skip
        pytest.fail(missing)
    port = free_port()
    with oauth_server() as issuer, notes_upstream() as notes_url, counting_upstream() as counter:
        config = {
            "public_url": f"http://127.0.0.1:{port}",
            "auth": {"jwt": [{"issuer": issuer, "jwks_url": f"{issuer}/jwks", "roles_claim": "groups"}]},
            "upstreams": {"notes": {"url": notes_url}, "counter": {"url": f"{counter}/mcp"}},
            "roles": {"support": {"allow_tools": ["notes.*", "counter.*"]}},
            "virtual_servers": {VS: {"upstreams": ["notes", "counter"]}, OTHER_VS: {"upstreams": ["notes"]}},
        }
        with stile_server(config, port=port) as base:
            yield Env(base, issuer, counter)


class MemoryStorage:
    """An in-memory `TokenStorage` for the SDK's OAuth provider."""

    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.client_info: OAuthClientInformationFull | None = None

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client_info

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client_info = client_info


@dataclass
class Exchange:
    method: str
    url: str
    status: int
    sent_authorization: str | None


@dataclass
class Recorder:
    exchanges: list[Exchange] = field(default_factory=list)

    async def on_response(self, response: httpx2.Response) -> None:
        request = response.request
        self.exchanges.append(Exchange(request.method, str(request.url), response.status_code,
                                       request.headers.get("authorization")))


def _claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    claims: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return claims


@asynccontextmanager
async def _oauth_client(env: Env, storage: MemoryStorage, recorder: Recorder) -> AsyncIterator[Client]:
    provider = ClientCredentialsOAuthProvider(server_url=env.resource, storage=storage, client_id=CLIENT_ID,
                                              client_secret=CLIENT_SECRET, issuer=env.issuer)
    http = httpx2.AsyncClient(auth=provider, timeout=30.0, event_hooks={"response": [recorder.on_response]})
    async with http, Client(streamable_http_client(env.resource, http_client=http)) as client:
        yield client


async def _token_for(env: Env, resource: str | None) -> str:
    """A client_credentials token straight from the authorization server's token endpoint."""
    data = {"grant_type": "client_credentials"}
    if resource is not None:
        data["resource"] = resource
    async with httpx2.AsyncClient(timeout=30.0) as http:
        meta = (await http.get(f"{env.issuer}/.well-known/openid-configuration")).json()
        resp = await http.post(meta["token_endpoint"], data=data, auth=(CLIENT_ID, CLIENT_SECRET))
    assert resp.status_code == 200, resp.text
    token: str = resp.json()["access_token"]
    return token


async def _raw_list(env: Env, bearer: str | None) -> httpx2.Response:
    headers = modern_headers("tools/list")
    if bearer is not None:
        headers["Authorization"] = f"Bearer {bearer}"
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": modern_meta()}}
    async with httpx2.AsyncClient(timeout=30.0) as http:
        return await http.post(env.resource, json=body, headers=headers)


async def test_the_sdk_client_discovers_the_authorization_server_gets_a_token_and_calls_a_tool(env: Env) -> None:
    storage, recorder = MemoryStorage(), Recorder()
    async with _oauth_client(env, storage, recorder) as client:
        names = [t.name for t in (await client.list_tools()).tools]
        assert "notes__list_notes" in names and "counter__echo" in names
        result = await client.call_tool("notes__list_notes", {})
        assert not result.is_error, result

    seen = [(x.method, x.url.split("?")[0], x.status) for x in recorder.exchanges]
    prm_url = f"{env.base}/.well-known/oauth-protected-resource/mcp/{VS}"
    token_url = f"{env.issuer}/token"
    # 1. the first MCP request is refused with a challenge naming the protected resource metadata
    first = recorder.exchanges[0]
    assert (first.method, first.url, first.status) == ("POST", env.resource, 401), seen
    assert first.sent_authorization is None
    # 2. ... which the client fetches next, then 3. the authorization server's metadata, then 4. the token
    order = [u for _, u, _ in seen]
    assert ("GET", prm_url, 200) in seen, seen
    assert ("GET", f"{env.issuer}/.well-known/openid-configuration", 200) in seen, seen
    assert ("POST", token_url, 200) in seen, seen
    assert order.index(prm_url) < order.index(f"{env.issuer}/.well-known/openid-configuration") \
        < order.index(token_url), seen
    # 5. every later MCP request carries the bearer token and is accepted
    later = [x for x in recorder.exchanges[order.index(token_url) + 1:] if x.url == env.resource]
    assert later and all(x.status in (200, 202) for x in later), seen
    assert storage.tokens is not None
    assert all(x.sent_authorization == f"Bearer {storage.tokens.access_token}" for x in later)
    # the token was minted for this virtual server (RFC 8707 resource -> aud) by the real server
    claims = _claims(storage.tokens.access_token)
    assert claims["iss"] == env.issuer
    assert claims["aud"] == env.resource
    assert claims["groups"] == ["support"]
    # the AS endpoints saw no Stile-bound bearer token, and Stile saw no client secret
    assert all(x.sent_authorization is None for x in recorder.exchanges if x.url.startswith(env.issuer)
               and x.method == "GET")
    assert all(not (x.sent_authorization or "").startswith("Basic") for x in recorder.exchanges
               if x.url.startswith(env.base))


async def test_a_token_for_another_audience_is_refused_with_401(env: Env) -> None:
    good = await _token_for(env, env.resource)
    assert (await _raw_list(env, good)).status_code == 200  # the control: same server, right audience
    for resource in (f"{env.base}/mcp/{OTHER_VS}", "https://elsewhere.example/mcp", None):
        token = await _token_for(env, resource)
        assert _claims(token).get("aud") == resource
        resp = await _raw_list(env, token)
        assert resp.status_code == 401, (resource, resp.text)
        challenge = resp.headers["www-authenticate"]
        assert f'resource_metadata="{env.base}/.well-known/oauth-protected-resource/mcp/{VS}"' in challenge
        assert 'error="invalid_token"' in challenge
    # and the token for `other` does work there: it was refused for its audience, not its signature
    other = await _token_for(env, f"{env.base}/mcp/{OTHER_VS}")
    headers = modern_headers("tools/list") | {"Authorization": f"Bearer {other}"}
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": modern_meta()}}
    async with httpx2.AsyncClient(timeout=30.0) as http:
        resp = await http.post(f"{env.base}/mcp/{OTHER_VS}", json=body, headers=headers)
    assert resp.status_code == 200, resp.text


async def test_a_hand_obtained_token_works_with_the_sdk_client_in_headers(env: Env) -> None:
    token = await _token_for(env, env.resource)
    http = httpx2.AsyncClient(timeout=30.0, headers={"Authorization": f"Bearer {token}"})
    async with http, Client(streamable_http_client(env.resource, http_client=http)) as client:
        result = await client.call_tool("notes__list_notes", {})
        assert not result.is_error, result


async def test_the_upstream_never_sees_the_clients_token(env: Env) -> None:
    before = await upstream_counts(env.counter)
    storage, recorder = MemoryStorage(), Recorder()
    async with _oauth_client(env, storage, recorder) as client:
        result = await client.call_tool("counter__echo", {"text": "hello"})
        assert not result.is_error, result
    after = await upstream_counts(env.counter)
    assert after.get("tools/call", 0) > before.get("tools/call", 0)  # the call did reach the upstream
    assert after.get("header:authorization", 0) == 0, after
    assert after.get("header:x-api-key", 0) == 0 and after.get("header:cookie", 0) == 0, after
