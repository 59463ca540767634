"""What an audit event says for each way a request can end, per virtual-server argument mode, with costs.

One real gateway (API keys, roles, a CEL rule, costs) in front of the bundled notes upstream; the
trail is read after the server has stopped (shutdown flushes every queued event).
"""

from __future__ import annotations

import asyncio
import json
import secrets
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from stile.observe.audit_sinks import verify_jsonl
from stile.stores.keys import hash_for_config
from tests.support import notes_upstream, stile_server

META = {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}}
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
DEV_KEY = "stile_devbot_" + secrets.token_urlsafe(32)
VIEWER_KEY = "stile_viewer_" + secrets.token_urlsafe(32)


async def _call(base: str, vs: str, method: str, params: dict[str, Any], *, key: str | None = None,
                extra: dict[str, str] | None = None, rid: int = 1) -> tuple[int, dict[str, Any]]:
    headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream",
               "MCP-Protocol-Version": "2026-07-28", "Mcp-Method": method, **(extra or {})}
    if "name" in params:
        headers["Mcp-Name"] = params["name"]
    if key is not None:
        headers["X-API-Key"] = key
    body = {"jsonrpc": "2.0", "id": rid, "method": method, "params": {**params, "_meta": META}}
    async with aiohttp.ClientSession() as http, http.post(f"{base}/mcp/{vs}", json=body, headers=headers) as r:
        return r.status, await r.json(content_type=None)


async def _metrics(base: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with aiohttp.ClientSession() as http, http.get(f"{base}/metrics") as r:
        text = await r.text()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


async def _session(base: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    tool = "notes__add_note"
    assert (await _call(base, "full", "tools/list", {}, key=DEV_KEY))[0] == 200
    status, body = await _call(base, "full", "tools/call",
                               {"name": tool, "arguments": {"title": "t", "text": "x", "token": "s3cret"}},
                               key=DEV_KEY, extra={"traceparent": f"00-{TRACE_ID}-{CLIENT_SPAN}-01"})
    assert status == 200 and "result" in body, body
    status, body = await _call(base, "full", "tools/call",
                               {"name": tool, "arguments": {"title": "a title far too long", "text": "x"}}, key=DEV_KEY)
    assert "denied by policy" in body["error"]["message"]
    status, body = await _call(base, "full", "tools/call", {"name": tool, "arguments": {"title": "t", "text": "x"}},
                               key=VIEWER_KEY)
    assert "Unknown tool" in body["error"]["message"]  # hidden == unknown
    assert (await _call(base, "full", "tools/list", {}))[0] == 401
    assert (await _call(base, "full", "tools/list", {}, key="stile_0000000000000000_" + "x" * 43))[0] == 401
    status, body = await _call(base, "digest", "tools/call",
                               {"name": "notes__get_note", "arguments": {"note_id": 999}}, key=DEV_KEY)
    assert body["result"]["isError"] is True
    await _call(base, "none", "tools/call", {"name": "notes__list_notes", "arguments": {}}, key=DEV_KEY)
    await _call(base, "redacted", "tools/call",
                {"name": "notes__add_note",
                 "arguments": {"title": "t", "text": "AKIAIOSFODNN7EXAMPLE", "password": "p"}},
                key=DEV_KEY)
    async with aiohttp.ClientSession() as http:
        hdrs = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream",
                "X-API-Key": DEV_KEY}
        async with http.post(f"{base}/mcp/full", data=b"{not json", headers=hdrs) as r:
            assert r.status == 400
        body = {"jsonrpc": "2.0", "id": 9, "method": "tools/list", "params": {}}
        async with http.post(f"{base}/mcp/full", json=body, headers={**hdrs, "Mcp-Session-Id": "forged"}) as r:
            assert r.status == 404
    return await _metrics(base)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict[str, Any]], Path, dict[Any, float]]:
    tmp = tmp_path_factory.mktemp("audit-events")
    trail = tmp / "audit.jsonl"
    with notes_upstream() as url:
        config = {
            "state": f"sqlite:///{tmp / 'state.db'}",
            "upstreams": {"notes": {"url": url}},
            "auth": {"key_cache_seconds": 0, "keys": [
                {"name": "dev-bot", "hash": hash_for_config(DEV_KEY), "roles": ["dev"]},
                {"name": "viewer", "hash": hash_for_config(VIEWER_KEY), "roles": ["viewer"]}]},
            "roles": {"dev": {"allow_tools": ["notes.*"]}, "viewer": {"allow_tools": ["notes.list_notes"]}},
            "rules": [{"name": "short-titles", "deny": 'tool.name == "notes.add_note" && size(arguments.title) > 10',
                       "reason": "titles must be short"}],
            "costs": {"notes.add_note": 5, "notes.*": 2},
            "audit": {"store": False, "jsonl": str(trail), "arguments": "redacted"},
            "virtual_servers": {"full": {"audit_arguments": "full"}, "digest": {"audit_arguments": "digest"},
                                "none": {"audit_arguments": "none"}, "redacted": {}},
        }
        with stile_server(config) as base:
            samples = asyncio.run(_session(base))
    events = [json.loads(line) for line in trail.read_text().splitlines()]
    return events, trail, samples


def _calls(events: list[dict[str, Any]], vs: str) -> list[dict[str, Any]]:
    return [e for e in events if e.get("virtual_server") == vs and e.get("method") == "tools/call"]


def test_a_successful_call_records_who_what_where_and_how_long(run: Any) -> None:
    events, _, _ = run
    ok = _calls(events, "full")[0]
    assert ok["outcome"] == "ok" and ok["error_code"] is None
    assert ok["principal"] == {"agent": "dev-bot", "user": None, "roles": ["dev"], "auth": "api_key"}
    assert (ok["tool"], ok["upstream"], ok["upstream_name"]) == ("notes__add_note", "notes", "add_note")
    assert ok["era"] == "modern" and ok["request_id"] == 1
    assert 0 < ok["upstream_ms"] <= ok["latency_ms"]
    assert ok["bytes_in"] > 0 and ok["bytes_out"] > 0 and ok["cache_hit"] is False
    assert ok["cost"] == 5  # first matching `costs` glob wins
    assert ok["trace_id"] == TRACE_ID  # the client's trace continues through Stile


def test_a_rule_denial_names_the_rule_and_its_reason(run: Any) -> None:
    events, _, _ = run
    denied = _calls(events, "full")[1]
    assert denied["outcome"] == "denied" and denied["error_type"] == "PolicyDenied"
    assert denied["reason"].startswith("short-titles:") and "titles must be short" in denied["reason"]
    assert denied["upstream_ms"] == 0  # it never reached the upstream


def test_a_hidden_tool_is_unknown_to_the_caller_but_the_trail_names_what_was_tried(run: Any) -> None:
    events, _, _ = run
    hidden = _calls(events, "full")[2]
    assert hidden["principal"]["agent"] == "viewer"
    assert (hidden["outcome"], hidden["error_code"], hidden["tool"]) == ("error", -32602, "notes__add_note")
    assert hidden["upstream_ms"] == 0 and hidden["cost"] == 0  # never ran, costs nothing


def test_refused_authentication_is_recorded(run: Any) -> None:
    events, _, samples = run
    refused = [e for e in events if e["outcome"] == "unauthenticated"]
    assert len(refused) == 2
    assert all(e["virtual_server"] == "full" and e["method"] == "tools/list" for e in refused)
    assert all(e["principal"]["auth"] == "none" and e["reason"] for e in refused)
    assert samples[("stile_auth_failures_total", (("reason", "unauthenticated"), ("virtual_server", "full")))] == 2


def test_requests_the_transport_rejects_are_recorded_with_who_sent_them(run: Any) -> None:
    events, _, samples = run
    rejected = {e["error_type"]: e for e in events if e["outcome"] == "error" and e["request_id"] is None}
    assert set(rejected) == {"ParseError", "SessionNotFound"}
    assert rejected["ParseError"]["method"] is None and rejected["ParseError"]["error_code"] == -32700
    assert rejected["SessionNotFound"]["method"] == "tools/list"
    assert all(e["principal"]["agent"] == "dev-bot" for e in rejected.values())
    assert samples[("stile_rejected_total", (("reason", "ParseError"), ("virtual_server", "full")))] == 1
    assert samples[("stile_rejected_total", (("reason", "SessionNotFound"), ("virtual_server", "full")))] == 1


def test_arguments_follow_each_virtual_servers_mode(run: Any) -> None:
    events, _, _ = run
    assert _calls(events, "full")[0]["arguments"] == {"title": "t", "text": "x", "token": "s3cret"}
    digest = _calls(events, "digest")[0]
    assert digest["arguments"].startswith("sha256:") and len(digest["arguments"]) == 71
    assert digest["outcome"] == "is_error" and digest["cost"] == 2
    assert _calls(events, "none")[0]["arguments"] is None
    assert _calls(events, "redacted")[0]["arguments"] == {"title": "t", "text": "***", "password": "***"}


def test_the_trail_chain_is_intact(run: Any) -> None:
    events, trail, _ = run
    assert verify_jsonl(trail) == []
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert len({e["id"] for e in events}) == len(events)


def test_metrics_split_upstream_time_from_gateway_overhead(run: Any) -> None:
    _, _, samples = run
    calls = samples[("stile_request_seconds_count", (("method", "tools/call"), ("virtual_server", "full")))]
    overhead = samples[("stile_overhead_seconds_count", (("method", "tools/call"), ("virtual_server", "full")))]
    assert calls == overhead == 3
    assert samples[("stile_upstream_seconds_count", (("upstream", "notes"),))] >= 4  # calls that reached notes
    assert samples[("stile_denials_total", (("reason", "PolicyDenied"), ("virtual_server", "full")))] == 1
    assert samples[("stile_requests_total", (("method", "tools/call"), ("outcome", "denied"),
                                             ("tool", "notes__add_note"), ("upstream", "notes"),
                                             ("virtual_server", "full")))] == 1
    assert samples[("stile_audit_dropped_total", ())] == 0
    assert samples[("stile_audit_sink_errors_total", (("sink", f"jsonl:{_trail(run)}"),))] == 0


def _trail(run: Any) -> Path:
    return Path(run[1])
