"""Quotas over real sockets: refused after N calls, warned at 80%/100%, durable across a restart, shown by the CLI."""

from __future__ import annotations

import asyncio
import json
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from prometheus_client.parser import text_string_to_metric_families

from stile.stores.keys import hash_for_config
from tests.e2e.helpers import counting_upstream, modern_meta, upstream_counts
from tests.support import REPO, free_port, stile_server

KEY = "stile_quotabot_" + secrets.token_urlsafe(32)


async def _call(base: str, rid: int) -> dict[str, Any]:
    headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream",
               "MCP-Protocol-Version": "2026-07-28", "Mcp-Method": "tools/call", "Mcp-Name": "count__echo",
               "X-API-Key": KEY}
    body = {"jsonrpc": "2.0", "id": rid, "method": "tools/call",
            "params": {"name": "count__echo", "arguments": {"text": "x"}, "_meta": modern_meta()}}
    async with aiohttp.ClientSession() as http, http.post(f"{base}/mcp/main", json=body, headers=headers) as r:
        assert r.status == 200
        answer: dict[str, Any] = await r.json(content_type=None)
        return answer


def test_a_quota_refuses_after_n_calls_warns_and_survives_a_restart(tmp_path: Path) -> None:
    trail = tmp_path / "audit.jsonl"
    with counting_upstream() as upstream:
        config = {
            "state": f"sqlite:///{tmp_path / 'state.db'}",
            "upstreams": {"count": {"url": f"{upstream}/mcp"}},
            "auth": {"key_cache_seconds": 0, "keys": [{"name": "quota-bot", "hash": hash_for_config(KEY),
                                                       "roles": ["caller"]}]},
            "roles": {"caller": {"allow_tools": ["count.*"]}},
            "audit": {"store": False, "jsonl": str(trail)},
            "costs": {"count.echo": 2},
            "virtual_servers": {"main": {"upstreams": ["count"]}},
            "policies": {"quota": {"flush_seconds": 3600, "quotas": [  # only the clean stop flushes in this test
                {"name": "daily-calls", "key": "agent", "limit": 5, "period": "day"},
                {"name": "monthly-cost", "key": "tool", "limit": 1000, "unit": "cost", "period": "month",
                 "tools": ["count.*"]},
            ]}},
        }
        port = free_port()
        with stile_server(config, port=port) as base:
            answers = asyncio.run(_gather(base, 7))
            samples = asyncio.run(_metrics(base))
        assert samples[("stile_quota_warnings_total", (("quota", "daily-calls"), ("threshold", "0.8")))] == 1
        assert samples[("stile_quota_warnings_total", (("quota", "daily-calls"), ("threshold", "1")))] == 1
        assert samples[("stile_quota_exceeded_total", (("quota", "daily-calls"),))] == 2
        assert samples[("stile_denials_total", (("reason", "QuotaExceeded"), ("virtual_server", "main")))] == 2
        assert all("result" in a for a in answers[:5]), answers[:5]
        for a in answers[5:]:
            err = a["error"]
            assert err["code"] == -32012 and "quota daily-calls exceeded" in err["message"]
            assert err["data"]["quota"] == "daily-calls" and err["data"]["limit"] == 5 and err["data"]["used"] == 5
            assert err["data"]["resets_at"].endswith("T00:00:00Z")
        assert (asyncio.run(upstream_counts(upstream))).get("tools/call", 0) == 5

        with stile_server(config, port=port) as base:  # a new process reads the counters back
            after = asyncio.run(_call(base, 100))
        assert after["error"]["code"] == -32012, after
        assert (asyncio.run(upstream_counts(upstream))).get("tools/call", 0) == 5

    events = [json.loads(line) for line in trail.read_text().splitlines()]
    warnings = [e for e in events if e["outcome"] == "quota_warning"]
    assert [("80%" in e["reason"], "100%" in e["reason"]) for e in warnings] == [(True, False), (False, True)]
    assert all("daily-calls" in e["reason"] and e["principal"]["agent"] == "quota-bot" for e in warnings)
    denied = [e for e in events if e["outcome"] == "denied"]
    assert len(denied) == 3 and all(e["error_type"] == "QuotaExceeded" for e in denied)

    cfg_path = tmp_path / "stile.yaml"
    cfg_path.write_text(yaml.safe_dump(config), encoding="utf-8")
    out = subprocess.run([sys.executable, "-m", "stile", "usage", "--quotas", "--config", str(cfg_path), "--json"],
                         capture_output=True, text=True, timeout=60, cwd=REPO)
    assert out.returncode == 0, out.stderr
    rows = {r["quota"]: r for r in map(json.loads, out.stdout.splitlines())}
    assert (rows["daily-calls"]["subject"], rows["daily-calls"]["used"], rows["daily-calls"]["fraction"]) == (
        "quota-bot", 5, 1.0)
    assert (rows["monthly-cost"]["subject"], rows["monthly-cost"]["used"]) == ("count.echo", 10)  # 5 calls x 2 units
    table = subprocess.run([sys.executable, "-m", "stile", "usage", "--quotas", "--config", str(cfg_path)],
                           capture_output=True, text=True, timeout=60, cwd=REPO)
    assert table.returncode == 0 and "daily-calls" in table.stdout and "100%" in table.stdout, table


async def _metrics(base: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with aiohttp.ClientSession() as http, http.get(f"{base}/metrics") as r:
        text = await r.text()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


async def _gather(base: str, n: int) -> list[dict[str, Any]]:
    return [await _call(base, i) for i in range(n)]
