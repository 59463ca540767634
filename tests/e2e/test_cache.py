"""The response cache (`policies.cache`) end to end: real gateway, real SDK upstreams, both client eras.

Three instances of tests/fixtures/per_caller_server.py (every answer carries a fresh counter, `/stats`
counts what reached it): `m` spoken to in 2026-07-28 with `ttlMs: 60000, cacheScope: public` on resource reads, `z`
in 2026-07-28 with the SDK's default `ttlMs: 0`, `l` in 2025-11-25 (no hints: the default TTL applies).
Two API keys (alice, bob) with the same role. Raw HTTP clients: the SDK client has a cache of its own.
"""

from __future__ import annotations

import itertools
import json
import secrets
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families

from stile.stores.keys import hash_for_config
from tests.e2e.helpers import LEGACY_HEADERS, initialize_body, modern_headers, modern_meta, upstream_counts
from tests.support import ready_process, stile_server

ALICE = "stile_alice_" + secrets.token_urlsafe(32)
BOB = "stile_bobby_" + secrets.token_urlsafe(32)
_tags = itertools.count(1)


@contextmanager
def per_caller_upstream(resource_ttl_ms: int = 0, scope: str = "private") -> Iterator[str]:
    argv = [sys.executable, "-u", "-m", "tests.fixtures.per_caller_server", "--port", "0",
            "--resource-ttl-ms", str(resource_ttl_ms), "--resource-scope", scope]
    with ready_process(argv, "per-caller upstream") as port:
        yield f"http://127.0.0.1:{port}"


@dataclass
class Env:
    base: str
    ups: dict[str, str]  # upstream name -> base URL (MCP at /mcp, counts at /stats)
    audit: Path


def gateway_config(ups: dict[str, str], audit: Path, tmp: Path) -> dict[str, Any]:
    return {
        "state": f"sqlite:///{tmp / 'state.db'}",
        "auth": {"key_cache_seconds": 0,
                 "keys": [{"name": "alice", "hash": hash_for_config(ALICE), "roles": ["reader"]},
                          {"name": "bob", "hash": hash_for_config(BOB), "roles": ["reader"]}]},
        "roles": {"reader": {"allow_tools": ["*.*"], "allow_resources": ["*.*"]}},
        "upstreams": {"m": {"url": f"{ups['m']}/mcp", "era": "modern"},
                      "z": {"url": f"{ups['z']}/mcp", "era": "modern"},
                      "l": {"url": f"{ups['l']}/mcp", "era": "legacy"}},
        "virtual_servers": {vs: {"upstreams": [up], "prefix": "never"}
                            for vs, up in (("vm", "m"), ("vz", "z"), ("vl", "l"), ("vl2", "l"))},
        "audit": {"jsonl": str(audit)},
        "policies": {"cache": {"enabled": True, "default_ttl_ms": 600_000, "max_bytes": 6000,
                               "tools": {"l.plain": {"scope": "shared"}}}},
    }


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("cache")
    with ExitStack() as stack:
        ups = {"m": stack.enter_context(per_caller_upstream(60_000, "public")),
               "z": stack.enter_context(per_caller_upstream()), "l": stack.enter_context(per_caller_upstream())}
        audit = tmp / "audit.jsonl"
        base = stack.enter_context(stile_server(gateway_config(ups, audit, tmp)))
        yield Env(base, ups, audit)


def _parse(raw: bytes) -> dict[str, Any]:
    text = raw.decode()
    if text.lstrip().startswith("{"):
        data: dict[str, Any] = json.loads(text)
        return data
    for line in text.splitlines():
        if line.startswith("data:"):
            msg = json.loads(line[5:])
            if "id" in msg:
                return dict(msg)
    raise AssertionError(f"no JSON-RPC answer in {text!r}")


class Caller:
    """One client of one virtual server: modern (stateless) or legacy (a session), with an API key."""

    def __init__(self, http: aiohttp.ClientSession, base: str, vs: str, key: str, era: str) -> None:
        self.http, self.url, self.key, self.era = http, f"{base}/mcp/{vs}", key, era
        self.session: str | None = None
        self.ids = itertools.count(2)

    async def _post(self, body: dict[str, Any], headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        async with self.http.post(self.url, json=body, headers={**headers, "X-API-Key": self.key}) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, await r.read()

    async def open(self) -> Caller:
        if self.era == "legacy":
            status, headers, raw = await self._post(initialize_body(), LEGACY_HEADERS)
            assert status == 200, raw
            self.session = headers["mcp-session-id"]
            status, _, raw = await self._post({"jsonrpc": "2.0", "method": "notifications/initialized"},
                                              self._legacy_headers())
            assert status == 202, raw
        return self

    def _legacy_headers(self) -> dict[str, str]:
        assert self.session is not None
        return {**LEGACY_HEADERS, "Mcp-Session-Id": self.session, "MCP-Protocol-Version": "2025-11-25"}

    async def request(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        if self.era == "legacy":
            body = {"jsonrpc": "2.0", "id": next(self.ids), "method": method, "params": params}
            status, _, raw = await self._post(body, self._legacy_headers())
        else:
            body = {"jsonrpc": "2.0", "id": next(self.ids), "method": method,
                    "params": {**params, "_meta": modern_meta()}}
            name = params.get("name", params.get("uri"))
            status, _, raw = await self._post(body, modern_headers(method, name))
        assert status == 200, raw
        return _parse(raw)

    async def tool(self, name: str, **arguments: Any) -> dict[str, Any]:
        reply = await self.request("tools/call", {"name": name, "arguments": arguments})
        assert "result" in reply, reply
        result: dict[str, Any] = reply["result"]
        return result

    async def text(self, name: str, **arguments: Any) -> str:
        result = await self.tool(name, **arguments)
        assert result.get("isError") is not True, result
        return str(result["content"][0]["text"])

    async def read(self, uri: str) -> dict[str, Any]:
        reply = await self.request("resources/read", {"uri": uri})
        assert "result" in reply, reply
        result: dict[str, Any] = reply["result"]
        return result


@asynccontextmanager
async def callers(env: Env, vs: str, era: str) -> AsyncIterator[tuple[Caller, Caller]]:
    async with aiohttp.ClientSession() as http:
        yield (await Caller(http, env.base, vs, ALICE, era).open(), await Caller(http, env.base, vs, BOB, era).open())


async def _calls(env: Env, upstream: str, what: str) -> int:
    return (await upstream_counts(env.ups[upstream])).get(what, 0)


def _tag() -> str:
    return f"t{next(_tags)}"


ERAS = pytest.mark.parametrize(("era", "vs", "up"), [("modern", "vm", "m"), ("legacy", "vl", "l"),
                                                     ("legacy", "vm", "m"), ("modern", "vl", "l")])


@ERAS
async def test_a_second_identical_read_only_call_by_the_same_caller_is_a_hit(env: Env, era: str, vs: str,
                                                                              up: str) -> None:
    tag = _tag()
    async with callers(env, vs, era) as (alice, _):
        first = await alice.text("count", tag=tag)
        assert await _calls(env, up, "tools/call:count") >= 1
        before = await _calls(env, up, "tools/call:count")
        again = await alice.text("count", tag=tag)
        assert again == first
        assert await _calls(env, up, "tools/call:count") == before  # the upstream did not run it again
        other = await alice.text("count", tag=tag + "-other")  # other arguments: another entry
        assert other != first
        assert await _calls(env, up, "tools/call:count") == before + 1


@ERAS
async def test_two_callers_never_see_each_others_results(env: Env, era: str, vs: str, up: str) -> None:
    tag = _tag()
    async with callers(env, vs, era) as (alice, bob):
        a = await alice.text("count", tag=tag)
        before = await _calls(env, up, "tools/call:count")
        b = await bob.text("count", tag=tag)
        assert b != a  # bob's call ran upstream, he did not get alice's answer
        assert await _calls(env, up, "tools/call:count") == before + 1
        assert await alice.text("count", tag=tag) == a
        assert await bob.text("count", tag=tag) == b


@pytest.mark.parametrize("era", ["modern", "legacy"])
async def test_a_tool_configured_scope_shared_is_one_entry_for_every_caller(env: Env, era: str) -> None:
    tag = _tag()
    async with callers(env, "vl", era) as (alice, bob):
        a = await alice.text("plain", tag=tag)  # not annotated read-only: cached because the config lists it
        before = await _calls(env, "l", "tools/call:plain")
        assert await bob.text("plain", tag=tag) == a
        assert await _calls(env, "l", "tools/call:plain") == before


@pytest.mark.parametrize("era", ["modern", "legacy"])
async def test_a_read_the_upstream_marked_cache_scope_public_is_shared_a_private_one_is_not(env: Env,
                                                                                             era: str) -> None:
    async with callers(env, "vm", era) as (alice, bob):
        a = await alice.read("counter://value")
        before = await _calls(env, "m", "resources/read:counter://value")
        assert (await bob.read("counter://value"))["contents"] == a["contents"]
        assert await _calls(env, "m", "resources/read:counter://value") == before
    async with callers(env, "vl", era) as (alice, bob):  # no hint from a legacy upstream: private
        a = await alice.read("counter://value")
        assert (await bob.read("counter://value"))["contents"] != a["contents"]


async def test_two_virtual_servers_never_share_an_entry(env: Env) -> None:
    tag = _tag()
    async with aiohttp.ClientSession() as http:
        one = await Caller(http, env.base, "vl", ALICE, "modern").open()
        two = await Caller(http, env.base, "vl2", ALICE, "modern").open()
        assert await one.text("count", tag=tag) != await two.text("count", tag=tag)


@pytest.mark.parametrize("era", ["modern", "legacy"])
async def test_tools_that_are_not_read_only_are_never_cached(env: Env, era: str) -> None:
    async with callers(env, "vl", era) as (alice, _):
        before = await _calls(env, "l", "tools/call:bump")
        assert await alice.text("bump") != await alice.text("bump")
        assert await _calls(env, "l", "tools/call:bump") == before + 2


@pytest.mark.parametrize("era", ["modern", "legacy"])
async def test_is_error_results_are_not_cached(env: Env, era: str) -> None:
    tag = _tag()
    async with callers(env, "vl", era) as (alice, _):
        before = await _calls(env, "l", "tools/call:flaky")
        first = await alice.tool("flaky", tag=tag)
        second = await alice.tool("flaky", tag=tag)
        assert first["isError"] is True and second["isError"] is True
        assert await _calls(env, "l", "tools/call:flaky") == before + 2  # both reached the upstream


@pytest.mark.parametrize("era", ["modern", "legacy"])
async def test_a_modern_upstreams_ttl_ms_0_is_not_cached(env: Env, era: str) -> None:
    async with callers(env, "vz", era) as (alice, _):
        first = await alice.read("counter://value")
        second = await alice.read("counter://value")
        assert first["contents"][0]["text"] != second["contents"][0]["text"]
        if era == "modern":
            assert first["ttlMs"] == 0


@pytest.mark.parametrize("era", ["modern", "legacy"])
async def test_a_modern_upstreams_ttl_ms_is_honoured_and_a_hit_says_what_is_left(env: Env, era: str) -> None:
    async with callers(env, "vm", era) as (alice, _):
        first = await alice.read("counter://value")
        before = await _calls(env, "m", "resources/read:counter://value")
        second = await alice.read("counter://value")
        assert second["contents"] == first["contents"]
        assert await _calls(env, "m", "resources/read:counter://value") == before
        if era == "modern":
            assert 0 < second["ttlMs"] <= first["ttlMs"] <= 60_000
        else:
            assert "ttlMs" not in second


async def _until_changed(alice: Caller, trigger: Any, read: Any, old: Any) -> None:
    """Trigger the upstream's notification until the cached answer changes (its stream may still be connecting)."""
    with anyio.fail_after(20):
        while await read() == old:
            await trigger()


@pytest.mark.parametrize(("era", "vs"), [("modern", "vm"), ("legacy", "vl")])
async def test_tools_list_changed_from_the_upstream_invalidates(env: Env, era: str, vs: str) -> None:
    tag = _tag()
    async with callers(env, vs, era) as (alice, _):
        first = await alice.text("count", tag=tag)
        assert await alice.text("count", tag=tag) == first
        await _until_changed(alice, lambda: alice.text("change_tools"), lambda: alice.text("count", tag=tag), first)


@pytest.mark.parametrize("era", ["modern", "legacy"])
async def test_resources_updated_from_the_upstream_invalidates_that_uri(env: Env, era: str) -> None:
    async with callers(env, "vl", era) as (alice, _):
        first = await alice.read("counter://value")
        assert await alice.read("counter://value") == first

        async def touch() -> None:
            await alice.text("touch", uri="counter://value")

        await _until_changed(alice, touch, lambda: alice.read("counter://value"), first)


async def test_the_cache_is_bounded_by_bytes_least_recently_used_first(env: Env) -> None:
    tags = [_tag() for _ in range(3)]
    async with callers(env, "vl", "modern") as (alice, _):
        firsts = [await alice.text("count", tag=t, pad=1800) for t in tags]  # ~2 kB each, max_bytes 6000
        assert await alice.text("count", tag=tags[2], pad=1800) == firsts[2]  # the newest is still there
        before = await _calls(env, "l", "tools/call:count")
        assert await alice.text("count", tag=tags[0], pad=1800) != firsts[0]  # the oldest was evicted
        assert await _calls(env, "l", "tools/call:count") == before + 1


async def _metric(base: str, name: str, **labels: str) -> float:
    async with aiohttp.ClientSession() as http, http.get(f"{base}/metrics") as r:
        text = await r.text()
    return sum(s.value for fam in text_string_to_metric_families(text) for s in fam.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


async def test_hits_and_misses_are_counted_in_metrics(env: Env) -> None:
    tag = _tag()
    hits = await _metric(env.base, "stile_cache_lookups_total", virtual_server="vl", result="hit")
    misses = await _metric(env.base, "stile_cache_lookups_total", virtual_server="vl", result="miss")
    async with callers(env, "vl", "modern") as (alice, _):
        await alice.text("count", tag=tag)
        await alice.text("count", tag=tag)
    assert await _metric(env.base, "stile_cache_lookups_total", virtual_server="vl", result="hit") == hits + 1
    assert await _metric(env.base, "stile_cache_lookups_total", virtual_server="vl", result="miss") == misses + 1


async def test_a_hit_is_audited_with_cache_hit_true(tmp_path: Path) -> None:
    ups: dict[str, str] = {}
    audit = tmp_path / "audit.jsonl"
    with ExitStack() as stack:
        for name in ("m", "z", "l"):
            ups[name] = stack.enter_context(per_caller_upstream())
        with stile_server(gateway_config(ups, audit, tmp_path)) as base:
            env = Env(base, ups, audit)
            async with callers(env, "vl", "modern") as (alice, bob):
                await alice.text("count", tag="audited")
                await alice.text("count", tag="audited")
                await bob.text("count", tag="audited")
    events = [json.loads(line) for line in audit.read_text().splitlines()]
    calls = [(e["principal"]["agent"], e["cache_hit"], e["cost"]) for e in events if e.get("method") == "tools/call"]
    assert calls == [("alice", False, 1.0), ("alice", True, 0.0), ("bob", False, 1.0)]
