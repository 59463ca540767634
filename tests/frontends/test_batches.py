"""JSON-RPC batches: answered in 2025-03-26 sessions (the only revision with batches), refused otherwise."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support import notes_upstream, stile_server


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    with notes_upstream() as url:
        config = {"upstreams": {"notes": {"url": url}}, "virtual_servers": {"v": {"auth": "none"}}}
        with stile_server(config) as base:
            yield f"{base}/mcp/v"


def _post(url: str, body: Any, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST", headers={
        "Content-Type": "application/json", "Accept": "application/json, text/event-stream", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=20) as resp:
            raw = resp.read()
            return resp.status, dict(resp.headers), json.loads(raw) if raw else None
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read() or b"null")


def _session(url: str, version: str) -> str:
    status, headers, body = _post(url, {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": version, "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}})
    assert status == 200 and body["result"]["protocolVersion"] == version
    return headers["mcp-session-id"]


def test_a_2025_03_26_session_gets_one_answer_per_request_in_a_batch(endpoint: str) -> None:
    sid = _session(endpoint, "2025-03-26")
    batch = [
        {"jsonrpc": "2.0", "id": 1, "method": "ping"},
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
        {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "nope", "arguments": {}}},
    ]
    status, _, body = _post(endpoint, batch, {"Mcp-Session-Id": sid})
    assert status == 200
    by_id = {item["id"]: item for item in body}
    assert by_id[1]["result"] == {}
    assert "notes__list_notes" in [t["name"] for t in by_id[2]["result"]["tools"]]
    assert by_id[3]["error"]["code"] == -32602


def test_a_2025_11_25_session_has_its_batch_refused(endpoint: str) -> None:
    sid = _session(endpoint, "2025-11-25")
    status, _, body = _post(endpoint, [{"jsonrpc": "2.0", "id": 1, "method": "ping"}], {"Mcp-Session-Id": sid})
    assert status == 400
    assert body["error"]["code"] == -32600


def test_a_batch_without_a_session_is_refused(endpoint: str) -> None:
    status, _, body = _post(endpoint, [{"jsonrpc": "2.0", "id": 1, "method": "ping"}])
    assert status == 400
    assert body["error"]["code"] == -32600
