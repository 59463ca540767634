"""The rate-limit and quota policies in process: config errors, subjects, the store fallback's log, replicas."""

from __future__ import annotations

import asyncio
import logging
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import ValidationError

from stile.config.model import GatewayConfig
from stile.core.catalog import Target
from stile.core.context import CallContext, Principal, Reply
from stile.policies.gcra import NS, Bucket, parse_rate
from stile.policies.quota import Quota, QuotaConfig, QuotaExceeded
from stile.policies.ratelimit import RateLimit, RateLimitConfig, RateLimited, TooManyRequests
from stile.policies.ratelimit_redis import RedisGcra
from stile.policies.registry import check_chains
from stile.stores.quotas import QuotaStore
from stile.stores.redis_lite import RedisLite, RedisReplyError


class Views:
    def __init__(self) -> None:
        self.tools = {"gh__create": Target("github", "create"), "crm__update": Target("crm", "update_ticket")}

    def view(self, name: str) -> Any:
        return SimpleNamespace(tool_index=self.tools)

    async def ensure_discovered(self, view: Any) -> Any:
        return view


async def ok(ctx: CallContext) -> Reply:
    return {"result": {}}


def ctx(tool: str | None = "gh__create", agent: str | None = "bot", user: str | None = None,
        claims: dict[str, Any] | None = None, vs: str = "main") -> CallContext:
    method = "tools/call" if tool else "tools/list"
    return CallContext(vs, method, {"name": tool} if tool else {}, 1, "modern", "2026-07-28",
                       principal=Principal(agent=agent, user=user, method="api_key", claims=claims or {}))


def test_bad_config_is_a_clear_problem() -> None:
    cfg = GatewayConfig.model_validate({"policies": {
        "ratelimit": {"limits": [{"key": "agent", "rate": "10/week"}], "redis": "http://x"},
        "quota": {"quotas": [{"name": "q", "key": "team", "limit": 0}]}}})
    problems = "\n".join(check_chains(cfg, "stile.yaml"))
    assert "policies.ratelimit.limits.0.rate" in problems and "expected COUNT/UNIT" in problems
    assert "policies.ratelimit.redis" in problems and "redis://" in problems
    assert "policies.quota.quotas.0.limit" in problems
    with pytest.raises(ValidationError, match="unique"):
        RateLimitConfig.model_validate({"limits": [{"key": "agent", "rate": "1/s", "name": "a"},
                                                   {"key": "user", "rate": "1/s", "name": "a"}]})


async def test_limits_apply_to_their_subjects_and_tools_only() -> None:
    cfg = RateLimitConfig.model_validate({"limits": [
        {"key": "tool", "match": "crm.update_ticket", "rate": "1/min"},
        {"key": "user", "rate": "2/min"},
        {"key": "agent", "rate": "1/min", "tools": ["github.*"], "virtual_servers": ["main"]},
    ]})
    rl = RateLimit(cfg, Views(), ["main", "other"])  # type: ignore[arg-type]
    await rl(ctx("gh__create"), ok)
    with pytest.raises(RateLimited) as denied:  # per agent on github.*: a JSON-RPC error
        await rl(ctx("gh__create"), ok)
    assert denied.value.http_status == 200 and denied.value.data["retry_after_ms"] > 59_000
    await rl(ctx("gh__create", agent="other-bot"), ok)  # another agent, another bucket
    await rl(ctx("gh__create", vs="other"), ok)  # the agent limit covers `main` only
    await rl(ctx("crm__update"), ok)
    with pytest.raises(RateLimited):
        await rl(ctx("crm__update", agent="someone-else"), ok)  # per tool, whoever calls
    await rl(ctx(None, user="ann"), ok)
    await rl(ctx(None, user="ann"), ok)
    with pytest.raises(TooManyRequests) as limited:  # per user, any request: HTTP 429
        await rl(ctx(None, user="ann"), ok)
    assert limited.value.http_status == 429 and limited.value.http_headers() == [(b"retry-after", b"30")]
    for _ in range(5):
        await rl(ctx(None, user=None), ok)  # a caller without a user is not limited per user


async def test_a_failing_store_is_logged_once_a_minute_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    cfg = RateLimitConfig.model_validate({"redis": "redis://127.0.0.1:1/0", "redis_timeout": 0.2,
                                          "limits": [{"key": "agent", "rate": "1/min"}]})
    rl = RateLimit(cfg, Views(), ["main"])  # type: ignore[arg-type]
    with caplog.at_level(logging.ERROR, logger="stile.ratelimit"):
        async with asyncio.timeout(5):
            for _ in range(4):
                await rl(ctx(None), ok)  # open: admitted although 1/min would refuse
    assert rl.store_errors == 4
    assert len([r for r in caplog.records if "rate limit store failed" in r.message]) == 1
    samples = {m.name: m.samples for m in rl.collect()}
    assert samples["stile_ratelimit_store_errors"][0].value == 4
    await rl.aclose()


async def test_quota_per_team_claim_and_cost_units() -> None:
    cfg = QuotaConfig.model_validate({"quotas": [
        {"name": "team-cost", "key": "team", "claim": "org", "limit": 10, "unit": "cost", "tools": ["github.*"]}]})
    q = Quota(cfg, Views(), {"github.create": 4}, None, None)  # type: ignore[arg-type]
    await q(ctx(claims={"org": "red"}), ok)
    await q(ctx(agent="b2", claims={"org": "red"}), ok)  # same team, another agent: 8 units
    with pytest.raises(QuotaExceeded) as exceeded:
        await q(ctx(claims={"org": "red"}), ok)
    assert exceeded.value.data["used"] == 8 and exceeded.value.data["unit"] == "cost"
    await q(ctx(claims={"org": "blue"}), ok)
    await q(ctx("crm__update", claims={"org": "red"}), ok)  # not a github tool
    await q(ctx(claims={}), ok)  # no team claim: not counted
    assert q.warnings == {("team-cost", "0.8"): 1}  # 8 of 10


async def test_replicas_see_each_others_usage_after_a_flush(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    cfg = QuotaConfig.model_validate({"quotas": [{"name": "daily", "key": "agent", "limit": 3}]})
    a = Quota(cfg, Views(), {}, None, QuotaStore(url))  # type: ignore[arg-type]
    b = Quota(cfg, Views(), {}, None, QuotaStore(url))  # type: ignore[arg-type]
    await a.start()
    await b.start()
    try:
        await a(ctx(), ok)
        await a(ctx(), ok)
        await b(ctx(), ok)  # before any flush each replica only knows its own (the documented bound)
        await a.flush()
        await b.flush()
        await a.flush()
        with pytest.raises(QuotaExceeded):
            await a(ctx(), ok)
        with pytest.raises(QuotaExceeded):
            await b(ctx(), ok)
    finally:
        await a.aclose()
        await b.aclose()


async def test_the_redis_script_admits_all_or_nothing() -> None:
    prefix = f"stile-test:{uuid.uuid4().hex}:"
    store = RedisGcra("redis://127.0.0.1:6379/0", 2.0, prefix)
    wide, narrow = Bucket.of(parse_rate("100/min"), 100), Bucket.of(parse_rate("3/min"), 3)
    try:
        results = [await store.acquire([("wide", wide), ("narrow", narrow)]) for _ in range(5)]
        assert results[:3] == [(-1, 0)] * 3
        assert [index for index, _ in results[3:]] == [1, 1]
        assert all(19 * NS < wait <= 20 * NS for _, wait in results[3:])  # a token every 20 s
        assert await store.acquire([("wide", wide)]) == (-1, 0)
        ttl = await store.client.command("PTTL", prefix + "wide")
        assert 0 < ttl <= 5_000  # a TAT expires once it has passed
        tat = int(await store.client.command("GET", prefix + "wide"))
        assert tat > 0
    finally:
        await store.client.command("DEL", prefix + "wide", prefix + "narrow")
        await store.aclose()


async def test_the_redis_client_selects_the_urls_database_before_any_command() -> None:
    key = f"stile-test:{uuid.uuid4().hex}"
    db1, db0 = RedisLite("redis://127.0.0.1:6379/1", timeout=2.0), RedisLite("redis://127.0.0.1:6379/0", timeout=2.0)
    try:
        results = await asyncio.gather(*(db1.command("INCR", key) for _ in range(5)))  # pipelined on connect
        assert sorted(results) == [1, 2, 3, 4, 5]
        assert await db0.command("GET", key) is None
        assert await db1.command("GET", key) == b"5"
        with pytest.raises(RedisReplyError):
            await db1.command("NOSUCHCOMMAND")
        assert await db1.command("DEL", key) == 1  # the connection is still in step after an error reply
    finally:
        await db1.aclose()
        await db0.aclose()
    with pytest.raises(ValueError, match="redis://"):
        RedisLite("http://127.0.0.1:6379")


async def test_a_redis_that_never_answers_costs_one_timeout_then_nothing() -> None:
    connections = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)
        await reader.read()  # accepts, reads, never answers
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    cfg = RateLimitConfig.model_validate({"redis": f"redis://127.0.0.1:{port}/0", "redis_timeout": 0.2,
                                          "on_store_error": "closed", "limits": [{"key": "agent", "rate": "100/s"}]})
    rl = RateLimit(cfg, Views(), ["main"])  # type: ignore[arg-type]
    try:
        async with asyncio.timeout(2):  # never a hang: the socket timeout ends the first call
            with pytest.raises(TooManyRequests) as refused:  # closed: refused as if limited
                await rl(ctx(None), ok)
            assert refused.value.data == {"retry_after_ms": 1000, "limit": "(store)"}
            for _ in range(3):
                with pytest.raises(TooManyRequests):
                    await rl(ctx(None), ok)
        assert len(connections) == 1  # retried at most once a second: the next calls did not wait on Redis
        assert rl.store_errors == 4
    finally:
        await rl.aclose()
        server.close()
        await server.wait_closed()
