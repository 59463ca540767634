"""Rate limits over real sockets: a real Stile in front of the SDK counting upstream, and the shared Redis.

Rates are tiny (a few per hour), so no token comes back while a test runs: how many calls are admitted is
exactly the burst, whatever the machine's speed.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from stile.stores.keys import hash_for_config
from tests.e2e.helpers import LEGACY_HEADERS, counting_upstream, initialize_body, modern_meta, upstream_counts
from tests.support import free_port, stile_server

KEYS = {name: f"stile_{name.replace('-', '')}_" + secrets.token_urlsafe(32)
        for name in ("tool-bot", "modern-bot", "legacy-bot", "shared-bot", "down-bot")}


def _config(upstream: str, tmp: Path, ratelimit: dict[str, Any]) -> dict[str, Any]:
    return {
        "state": f"sqlite:///{tmp / 'state.db'}",
        "upstreams": {"count": {"url": f"{upstream}/mcp"}},
        "auth": {"key_cache_seconds": 0,
                 "keys": [{"name": n, "hash": hash_for_config(k), "roles": ["caller"]} for n, k in KEYS.items()]},
        "roles": {"caller": {"allow_tools": ["count.*"]}},
        "audit": {"store": False, "jsonl": str(tmp / "audit.jsonl")},
        "virtual_servers": {"tools": {"upstreams": ["count"]}, "per": {"upstreams": ["count"]}},
        "policies": {"ratelimit": ratelimit},
    }


async def _modern(base: str, vs: str, method: str, params: dict[str, Any], agent: str,
                  rid: int = 1) -> tuple[int, dict[str, str], dict[str, Any]]:
    headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream",
               "MCP-Protocol-Version": "2026-07-28", "Mcp-Method": method, "X-API-Key": KEYS[agent]}
    if "name" in params:
        headers["Mcp-Name"] = params["name"]
    body = {"jsonrpc": "2.0", "id": rid, "method": method, "params": {**params, "_meta": modern_meta()}}
    async with aiohttp.ClientSession() as http, http.post(f"{base}/mcp/{vs}", json=body, headers=headers) as r:
        return r.status, dict(r.headers), await r.json(content_type=None)


def _echo(text: str) -> dict[str, Any]:
    return {"name": "count__echo", "arguments": {"text": text}}


async def _metrics(base: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with aiohttp.ClientSession() as http, http.get(f"{base}/metrics") as r:
        text = await r.text()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, Path]]:
    tmp = tmp_path_factory.mktemp("ratelimit")
    limits = {"limits": [
        {"key": "tool", "match": "count.echo", "rate": "2/h", "virtual_servers": ["tools"]},
        {"key": "agent", "rate": "3/h", "virtual_servers": ["per"], "name": "per-agent"},
    ]}
    with counting_upstream() as upstream, stile_server(_config(upstream, tmp, limits)) as base:
        yield base, upstream, tmp


def test_a_per_tool_limit_answers_a_jsonrpc_error_with_the_retry_time_and_never_reaches_the_upstream(
        gateway: tuple[str, str, Path]) -> None:
    base, upstream, _ = gateway

    async def go() -> None:
        before = (await upstream_counts(upstream)).get("tools/call", 0)
        answers = [await _modern(base, "tools", "tools/call", _echo(f"m{i}"), "tool-bot", rid=i) for i in range(5)]
        assert [status for status, _, _ in answers] == [200] * 5  # a per-tool limit keeps HTTP 200
        assert all("result" in body for _, _, body in answers[:2]), answers[:2]
        for _, _, body in answers[2:]:
            err = body["error"]
            assert err["code"] == -32011 and "rate limit exceeded" in err["message"]
            assert 1_700_000 < err["data"]["retry_after_ms"] <= 1_800_000  # 2/h: the next token within 30 min
        assert (await upstream_counts(upstream)).get("tools/call", 0) - before == 2  # denied calls never arrived
        # the limit is on that tool only: listing still works
        status, _, body = await _modern(base, "tools", "tools/list", {}, "tool-bot")
        assert status == 200 and "result" in body
        samples = await _metrics(base)
        assert samples[("stile_ratelimit_denied_total", (("limit", "tool 2/h"),))] == 3
        assert samples[("stile_denials_total", (("reason", "RateLimited"), ("virtual_server", "tools")))] == 3

    asyncio.run(go())


def test_a_per_principal_limit_is_http_429_with_retry_after_in_the_modern_era(gateway: tuple[str, str, Path]) -> None:
    base, _, _ = gateway

    async def go() -> None:
        answers = [await _modern(base, "per", "tools/list", {}, "modern-bot", rid=i) for i in range(4)]
        assert [status for status, _, _ in answers] == [200, 200, 200, 429]
        _, headers, body = answers[3]
        assert 1100 < int(headers["Retry-After"]) <= 1200  # 3/h: a token every 20 min
        assert body["error"]["code"] == -32011 and body["error"]["data"]["limit"] == "per-agent"
        assert 1_100_000 < body["error"]["data"]["retry_after_ms"] <= 1_200_000
        # another agent has its own bucket
        assert (await _modern(base, "per", "tools/list", {}, "tool-bot"))[0] == 200

    asyncio.run(go())


def test_a_per_principal_limit_is_http_429_with_retry_after_in_the_legacy_era(gateway: tuple[str, str, Path]) -> None:
    base, _, _ = gateway

    async def go() -> None:
        headers = {**LEGACY_HEADERS, "X-API-Key": KEYS["legacy-bot"]}
        url = f"{base}/mcp/per"
        async with aiohttp.ClientSession() as http:
            async with http.post(url, json=initialize_body(), headers=headers) as r:  # 1st request
                assert r.status == 200
                sid = r.headers["mcp-session-id"]
            session = {**headers, "Mcp-Session-Id": sid, "MCP-Protocol-Version": "2025-11-25"}
            note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
            async with http.post(url, json=note, headers=session) as r:  # notifications are not counted
                assert r.status == 202
            statuses = []
            for rid in (2, 3, 4):
                async with http.post(url, json={"jsonrpc": "2.0", "id": rid, "method": "tools/list"},
                                     headers=session) as r:
                    statuses.append(r.status)
                    last = (dict(r.headers), await r.json(content_type=None))
            assert statuses == [200, 200, 429]
            assert 1100 < int(last[0]["Retry-After"]) <= 1200
            assert last[1]["id"] == 4 and last[1]["error"]["data"]["retry_after_ms"] > 0
            # a new session is refused at initialize too (same agent, same bucket)
            async with http.post(url, json=initialize_body(9), headers=headers) as r:
                assert r.status == 429 and int(r.headers["Retry-After"]) >= 1
                assert "mcp-session-id" not in r.headers

    asyncio.run(go())


def test_denials_are_audited_with_the_limit_as_reason(gateway: tuple[str, str, Path]) -> None:
    base, _, tmp = gateway
    status, _, _ = asyncio.run(_modern(base, "per", "tools/list", {}, "modern-bot", rid=99))  # over its limit
    assert status == 429
    trail = tmp / "audit.jsonl"

    async def wait_for_event() -> list[dict[str, Any]]:
        async with asyncio.timeout(10):
            while True:
                events = [json.loads(line) for line in trail.read_text().splitlines()] if trail.exists() else []
                found = [e for e in events if e.get("request_id") == 99 and e.get("outcome") == "denied"]
                if found:
                    return found
                await asyncio.sleep(0.05)  # the audit writer runs off the request path; poll with a deadline

    denied = asyncio.run(wait_for_event())[0]
    assert denied["error_type"] == "TooManyRequests" and "rate limit exceeded (per-agent)" in denied["reason"]
    assert denied["principal"]["agent"] == "modern-bot"


@pytest.mark.parametrize("where", ["policy", "top-level"])
def test_two_stile_processes_sharing_redis_enforce_one_limit(tmp_path: Path, where: str) -> None:
    """`policies.ratelimit.redis`, or the deployment's top-level `redis:` (the bus) when the policy names none."""
    prefix = f"stile-test:{uuid.uuid4().hex}:"
    limits: dict[str, Any] = {"limits": [{"key": "agent", "rate": "5/h", "virtual_servers": ["per"]}]}
    top: dict[str, Any] = {}
    if where == "policy":
        limits.update({"redis": "redis://127.0.0.1:6379/0", "key_prefix": prefix})
    else:
        top = {"redis": "redis://127.0.0.1:6379/0", "redis_prefix": prefix}
    with counting_upstream() as upstream, ExitStack() as stack:
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        a = stack.enter_context(stile_server({**_config(upstream, tmp_path / "a", limits), **top}))
        b = stack.enter_context(stile_server({**_config(upstream, tmp_path / "b", limits), **top}))

        async def go() -> list[int]:
            statuses = []
            for i in range(12):  # alternate between the two processes
                statuses.append((await _modern(a if i % 2 == 0 else b, "per", "tools/list", {}, "shared-bot",
                                               rid=i))[0])
            return statuses

        start = time.monotonic()
        statuses = asyncio.run(go())
        elapsed = time.monotonic() - start
    # burst 5, then one token every 12 min: admitted <= burst + rate * t over both processes together
    admitted = statuses.count(200)
    assert 5 <= admitted <= 5 + int(elapsed * 5 / 3600), (statuses, elapsed)
    assert statuses[:5] == [200] * 5 and statuses.count(429) == 12 - admitted


@pytest.mark.parametrize(("mode", "expected"), [("open", 200), ("closed", 429)])
def test_redis_down_applies_the_fallback_and_reports_it(tmp_path: Path, mode: str, expected: int) -> None:
    closed_port = free_port()  # nothing listens there
    limits = {"redis": f"redis://127.0.0.1:{closed_port}/0", "on_store_error": mode, "redis_timeout": 0.2,
              "limits": [{"key": "agent", "rate": "1/min", "virtual_servers": ["per"]}]}
    with counting_upstream() as upstream, stile_server(_config(upstream, tmp_path, limits)) as base:

        async def go() -> tuple[list[int], dict[Any, float]]:
            async with asyncio.timeout(20):  # never a hang: each call fails fast
                statuses = [(await _modern(base, "per", "tools/list", {}, "down-bot", rid=i))[0] for i in range(3)]
            return statuses, await _metrics(base)

        statuses, samples = asyncio.run(go())
    assert statuses == [expected] * 3  # open: a 1/min limit would have refused calls 2 and 3
    assert samples[("stile_ratelimit_store_errors_total", ())] == 3
