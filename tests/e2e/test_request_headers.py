"""Ambiguous credential headers and non-JSON POST bodies are refused before any work, over raw HTTP.

A repeated `Authorization` or `X-API-Key` header would otherwise be collapsed (last one wins) by the header
map; a POST whose Content-Type is not `application/json` (text/plain, forms, multipart, none) is answered
415 with a JSON-RPC error, on `/mcp/<vs>` and on the legacy `/sse/<vs>/messages` endpoint.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import pytest

from stile.frontends.asgi import JSON_CT
from stile.stores.keys import hash_for_config
from stile.wire import sse
from tests.e2e.helpers import initialize_body
from tests.support import notes_upstream, stile_server

PING = json.dumps({"jsonrpc": "2.0", "id": 7, "method": "ping"}).encode()


@dataclass
class Env:
    port: int
    key: str
    other_key: str


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    key, other = "stile_gitops_" + secrets.token_urlsafe(32), "stile_gitops_" + secrets.token_urlsafe(32)
    with notes_upstream() as notes:
        config = {
            "auth": {"keys": [{"name": "one", "hash": hash_for_config(key), "roles": ["all"]},
                              {"name": "two", "hash": hash_for_config(other), "roles": ["all"]}]},
            "roles": {"all": {"allow_tools": ["notes.*"]}},
            "upstreams": {"notes": {"url": notes}},
            "virtual_servers": {"keyed": {}, "open": {"auth": "none"}},
        }
        with stile_server(config) as base:
            port = urlsplit(base).port
            assert port is not None
            yield Env(port, key, other)


async def raw(port: int, method: str, path: str, headers: list[tuple[str, str]], body: bytes = b"",
              *, stream_first_event: bool = False) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 request written byte for byte (repeated headers stay repeated); the status, headers, body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Connection: close",
                 *(f"{k}: {v}" for k, v in headers)]
        if method == "POST":
            lines.append(f"Content-Length: {len(body)}")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        await writer.drain()
        async with asyncio.timeout(20):
            head = await reader.readuntil(b"\r\n\r\n")
            status_line, *header_lines = head.decode("latin-1").split("\r\n")
            got = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines if h)}
            if stream_first_event:
                data = await reader.readuntil(b"\n\n")
            elif "content-length" in got:
                data = await reader.readexactly(int(got["content-length"]))
            else:
                data = await reader.read()
        return int(status_line.split()[1]), got, data
    finally:
        writer.close()


ACCEPT = ("Accept", "application/json, text/event-stream")


async def test_one_api_key_header_is_accepted(env: Env) -> None:
    status, _, _ = await raw(env.port, "POST", "/mcp/keyed",
                             [("Content-Type", "application/json"), ACCEPT, ("X-API-Key", env.key)],
                             json.dumps(initialize_body()).encode())
    assert status == 200


@pytest.mark.parametrize("name", ["X-API-Key", "Authorization"])
async def test_a_repeated_credential_header_is_refused_with_a_clear_message(env: Env, name: str) -> None:
    def value(key: str) -> str:
        return key if name == "X-API-Key" else f"Bearer {key}"

    status, headers, body = await raw(
        env.port, "POST", "/mcp/keyed",
        [("Content-Type", "application/json"), ACCEPT, (name, value(env.other_key)), (name, value(env.key))],
        json.dumps(initialize_body()).encode())
    assert status == 400, body
    assert headers["content-type"] == JSON_CT[1].decode()
    error = json.loads(body)["error"]
    assert error["code"] == -32600
    assert name.lower() in error["message"].lower() and "more than one" in error["message"]


async def test_a_repeated_credential_header_is_refused_even_with_identical_values(env: Env) -> None:
    status, _, _ = await raw(env.port, "POST", "/mcp/keyed",
                             [("Content-Type", "application/json"), ACCEPT, ("X-API-Key", env.key),
                              ("x-api-key", env.key)], json.dumps(initialize_body()).encode())
    assert status == 400


@pytest.mark.parametrize("content_type", [
    None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
    "application/jsonx", "text/json",
])
async def test_a_post_that_is_not_application_json_gets_415_with_a_json_rpc_error(
        env: Env, content_type: str | None) -> None:
    headers = [ACCEPT] + ([("Content-Type", content_type)] if content_type is not None else [])
    status, got, body = await raw(env.port, "POST", "/mcp/open", headers, PING)
    assert status == 415, body
    assert got["content-type"] == "application/json"
    reply = json.loads(body)
    assert reply["jsonrpc"] == "2.0" and reply["error"]["code"] == -32600
    assert "application/json" in reply["error"]["message"]


@pytest.mark.parametrize("content_type", ["application/json", "application/json; charset=utf-8",
                                          "Application/JSON;charset=UTF-8"])
async def test_application_json_with_parameters_is_accepted(env: Env, content_type: str) -> None:
    status, _, body = await raw(env.port, "POST", "/mcp/open", [ACCEPT, ("Content-Type", content_type)],
                                json.dumps(initialize_body()).encode())
    assert status == 200, body


async def _sse_endpoint(env: Env) -> tuple[asyncio.StreamWriter, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", env.port)
    writer.write(f"GET /sse/open HTTP/1.1\r\nHost: 127.0.0.1:{env.port}\r\nAccept: text/event-stream\r\n\r\n"
                 .encode())
    await writer.drain()
    async with asyncio.timeout(20):
        await reader.readuntil(b"\r\n\r\n")
        buffered = b""
        while True:
            buffered += await reader.read(4096)
            events = sse.Decoder().feed(buffered)
            if events:
                return writer, events[0].data


async def test_a_legacy_sse_message_that_is_not_json_gets_415(env: Env) -> None:
    writer, endpoint = await _sse_endpoint(env)
    try:
        status, _, body = await raw(env.port, "POST", endpoint, [("Content-Type", "text/plain")], PING)
        assert status == 415, body
        assert json.loads(body)["error"]["code"] == -32600
        status, _, _ = await raw(env.port, "POST", endpoint, [("Content-Type", "application/json")], PING)
        assert status == 202
    finally:
        writer.close()
