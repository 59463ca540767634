"""Requests refused for their Host or Origin (DNS rebinding, a foreign web page) are counted and audited.

The refusal happens before the virtual server is looked up: the audit names the virtual server only when
the path names a real one, and client-chosen text (a made-up path) never becomes a metric label.
"""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp

from tests.e2e.helpers import modern_headers, modern_meta
from tests.support import notes_upstream, stile_server

BODY = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": modern_meta()}}


def _denied(path: Path) -> list[dict[str, object]]:
    """The trail's refusals, read after the gateway stopped (a graceful stop drains the audit queue)."""
    events = [json.loads(line) for line in path.read_text().splitlines()]
    return [e for e in events if e.get("outcome") == "denied"]


async def test_host_and_origin_refusals_reach_the_audit_trail_and_metrics(tmp_path: Path) -> None:
    trail = tmp_path / "audit.jsonl"
    with notes_upstream() as notes, stile_server({
            "upstreams": {"notes": {"url": notes}}, "virtual_servers": {"main": {"auth": "none"}},
            "audit": {"jsonl": str(trail)}}) as base:
        async with aiohttp.ClientSession() as http:
            tries = [("/mcp/main", {"Host": "evil.example"}, 421),
                     ("/mcp/main", {"Origin": "http://evil.example"}, 403),
                     ("/mcp/made-up-name", {"Origin": "http://evil.example"}, 403),
                     ("/mcp/main", {"Host": "bad host\\x"}, 400)]
            for path, extra, status in tries:
                async with http.post(base + path, json=BODY, headers={**modern_headers("tools/list"), **extra}) as r:
                    assert r.status == status, path
            async with http.get(base + "/metrics") as r:
                metrics = await r.text()
    denied = _denied(trail)
    assert [(e["virtual_server"], e["error_type"]) for e in denied] == [
        ("main", "InvalidHost"), ("main", "InvalidOrigin"), ("(none)", "InvalidOrigin"), ("main", "BadHost")]
    assert "evil.example" in str(denied[0]["reason"])
    assert all(e["client_address"] == "127.0.0.1" for e in denied)
    assert 'stile_rejected_total{reason="InvalidOrigin",virtual_server="(none)"} 1.0' in metrics
    assert "made-up-name" not in metrics


async def test_a_404_names_the_virtual_servers_only_when_every_one_is_anonymous() -> None:
    with notes_upstream() as notes, stile_server({
            "upstreams": {"notes": {"url": notes}},
            "virtual_servers": {"secret-finance": {}, "open": {"auth": "none"}}}) as base:
        async with aiohttp.ClientSession() as http, http.post(
                base + "/mcp/secret-financ", json=BODY, headers=modern_headers("tools/list")) as r:
            assert r.status == 404
            message = (await r.json())["error"]["message"]
    assert message == "no MCP endpoint at /mcp/secret-financ"
