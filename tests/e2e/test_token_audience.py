"""The token audience never comes from the caller: off loopback, bearer tokens need `public_url`.

Bound to a non-loopback address without `public_url`, the canonical URL would be built from the Host
header, so a caller could present a token minted for another service of the same IdP by sending that
service's Host. Such a gateway refuses bearer tokens (clear 401) and says why at startup; API keys,
which carry no audience, still work. 127.0.0.2 is not one of the loopback *names* Stile trusts.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from joserfc import jwt
from joserfc.jwk import RSAKey

from stile.stores.keys import hash_for_config
from tests.support import REPO, free_port, notes_upstream, stop, wait_http

ISSUER = "https://idp.test"
HOST = "127.0.0.2"
META = {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}}


@dataclass
class Served:
    base: str
    log: Path


@contextmanager
def serve_on(config: dict[str, Any], host: str) -> Iterator[Served]:
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="stile-aud-") as tmp:
        cfg = Path(tmp) / "stile.yaml"
        cfg.write_text(yaml.safe_dump(config), encoding="utf-8")
        log = Path(tmp) / "stile.log"
        with log.open("wb") as out:
            proc = subprocess.Popen([sys.executable, "-m", "stile", "serve", "--config", str(cfg), "--host", host,
                                     "--port", str(port)], stdout=out, stderr=subprocess.STDOUT,
                                    env=dict(os.environ), cwd=REPO)
            try:
                wait_http(f"http://{host}:{port}/healthz", proc, log=log)
                yield Served(f"http://{host}:{port}", log)
            finally:
                stop(proc)


@pytest.fixture(scope="module")
def signing() -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": "k1"})


def gateway_config(notes: str, signing: RSAKey, key: str, **extra: Any) -> dict[str, Any]:
    return {"auth": {"jwt": [{"issuer": ISSUER, "jwks": {"keys": [signing.as_dict(private=False)]}}],
                     "keys": [{"name": "bot", "hash": hash_for_config(key), "roles": ["support"]}]},
            "roles": {"support": {"allow_tools": ["notes.*"]}},
            "upstreams": {"notes": {"url": notes}},
            "virtual_servers": {"scoped": {}}, **extra}


def token(signing: RSAKey, aud: str) -> str:
    now = int(time.time())
    claims = {"iss": ISSUER, "sub": "alice", "azp": "app", "aud": aud, "exp": now + 300, "iat": now,
              "groups": ["support"]}
    return jwt.encode({"alg": "RS256", "kid": "k1"}, claims, signing)


async def tools_list(base: str, **headers: str) -> tuple[int, dict[str, Any]]:
    hdrs = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream",
            "MCP-Protocol-Version": "2026-07-28", "Mcp-Method": "tools/list", **headers}
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": META}}
    async with aiohttp.ClientSession() as http, http.post(f"{base}/mcp/scoped", json=body, headers=hdrs) as r:
        raw = await r.read()
        return r.status, json.loads(raw) if r.content_type == "application/json" else {"text": raw.decode()}


@pytest.fixture(scope="module")
def notes() -> Iterator[str]:
    with notes_upstream() as url:
        yield url


async def test_off_loopback_without_public_url_a_token_for_another_service_is_refused(
        notes: str, signing: RSAKey) -> None:
    key = "stile_gitops_" + secrets.token_urlsafe(32)
    with serve_on(gateway_config(notes, signing, key), HOST) as served:
        foreign = token(signing, "http://other-service/mcp/scoped")
        status, body = await tools_list(served.base, Host="other-service", Authorization=f"Bearer {foreign}")
        assert status == 401, body
        assert "public_url" in body["error"]["message"]
        own = token(signing, f"{served.base}/mcp/scoped")
        status, body = await tools_list(served.base, Authorization=f"Bearer {own}")
        assert status == 401 and "public_url" in body["error"]["message"]
        status, _ = await tools_list(served.base, **{"X-API-Key": key})  # keys carry no audience
        assert status == 200
        startup = served.log.read_text(errors="replace")
    assert "public_url" in startup and "WARNING" in startup and "scoped" in startup


async def test_with_public_url_the_audience_is_the_configured_url_whatever_the_host(
        notes: str, signing: RSAKey) -> None:
    key = "stile_gitops_" + secrets.token_urlsafe(32)
    public = "https://mcp.example.test"
    with serve_on(gateway_config(notes, signing, key, public_url=public), HOST) as served:
        status, body = await tools_list(served.base, Authorization=f"Bearer {token(signing, public + '/mcp/scoped')}")
        assert status == 200, body
        foreign = token(signing, "http://other-service/mcp/scoped")
        status, _ = await tools_list(served.base, Host="other-service", Authorization=f"Bearer {foreign}")
        assert status == 401
        assert "public_url" not in served.log.read_text(errors="replace")


async def test_on_loopback_the_host_header_is_limited_to_loopback_names(notes: str, signing: RSAKey) -> None:
    key = "stile_gitops_" + secrets.token_urlsafe(32)
    with serve_on(gateway_config(notes, signing, key), "127.0.0.1") as served:
        own = token(signing, served.base + "/mcp/scoped")
        status, body = await tools_list(served.base, Authorization=f"Bearer {own}")
        assert status == 200, body
        foreign = token(signing, "http://other-service/mcp/scoped")
        status, _ = await tools_list(served.base, Host="other-service", Authorization=f"Bearer {foreign}")
        assert status == 421
