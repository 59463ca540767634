"""PooledUpstream's choices (balancing, retries, breaker-open answer) over scripted in-process members.

The members are small in-memory `Upstream`s that answer or fail on command, so each decision is exact;
tests/e2e/test_endpoints.py runs the same pool over three real SDK servers.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest

from stile.config.model import UpstreamConfig
from stile.upstreams.base import DEFAULT_OPTIONS, CallOptions, Era, OnNotification, Upstream, ignore_notification
from stile.upstreams.h1 import H1Error
from stile.upstreams.pool import PooledUpstream
from stile.wire.errors import UpstreamTimeout, UpstreamUnavailable

URLS = ["http://127.0.0.1:1/mcp", "http://127.0.0.1:2/mcp", "http://127.0.0.1:3/mcp"]


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


class Member:
    """An upstream that answers with its label, or fails the way it was told to."""

    def __init__(self, label: str) -> None:
        self.name = "up"
        self.label = label
        self.era: Era | None = "modern"
        self.server_info: dict[str, Any] = {"name": label}
        self.capabilities: dict[str, Any] = {"tools": {}}
        self.instructions: str | None = None
        self.on_notification: OnNotification = ignore_notification
        self.calls: Counter[str] = Counter()
        self.fail: str | None = None  # None | "refused" (before sending) | "reset" (after sending)
        self.gate: asyncio.Event | None = None
        self.entered = asyncio.Event()
        self.tools: list[dict[str, Any]] = []

    @property
    def healthy(self) -> bool:
        return True

    @property
    def last_error(self) -> str | None:
        return None

    async def start(self) -> None:
        return None

    async def request(self, method: str, params: dict[str, Any], opts: CallOptions = DEFAULT_OPTIONS) -> Any:
        self.calls[method] += 1
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.fail == "refused":
            cause = H1Error("cannot connect")
            cause.maybe_sent = False
            raise UpstreamUnavailable("up", "connection failed") from cause
        if self.fail == "reset":
            raise UpstreamUnavailable("up", "connection failed") from H1Error("reset")
        if method == "tools/list":
            return {"result": {"tools": self.tools}}
        return {"result": {"who": self.label}}

    async def notify(self, method: str, params: dict[str, Any]) -> None:
        return None

    async def aclose(self) -> None:
        return None


def make(**cfg: Any) -> tuple[PooledUpstream, list[Member], Clock]:
    clock = Clock()
    members = [Member(u) for u in URLS]
    pairs: list[tuple[str, Upstream]] = [(m.label, m) for m in members]
    pool = PooledUpstream("up", UpstreamConfig(endpoints=URLS, **cfg), pairs, clock=clock, rand=lambda: 0.0)
    return pool, members, clock


def call(name: str = "write") -> tuple[str, dict[str, Any]]:
    return "tools/call", {"name": name, "arguments": {}}


async def who(pool: PooledUpstream, method: str, params: dict[str, Any], affinity: str | None = None) -> str:
    reply = await pool.request(method, params, CallOptions(affinity=affinity))
    return str(reply["result"]["who"])


async def test_round_robin_spreads_evenly() -> None:
    pool, _, _ = make()
    seen = Counter([await who(pool, *call()) for _ in range(9)])
    assert seen == Counter({u: 3 for u in URLS})


async def test_session_balance_sticks_and_moves_only_when_its_endpoint_is_out() -> None:
    pool, members, clock = make(balance="session", ejection={"consecutive_failures": 1, "base_seconds": 5})
    homes = {}
    for key in (f"client-{i}" for i in range(12)):
        seen = {await who(pool, *call(), affinity=key) for _ in range(4)}
        assert len(seen) == 1
        homes[key] = seen.pop()
    assert len(set(homes.values())) == 3  # spread over all three
    key, home = next(iter(homes.items()))
    victim = next(m for m in members if m.label == home)
    victim.fail = "refused"
    moved = await who(pool, *call(), affinity=key)  # refused before sending: retried elsewhere
    assert moved != home
    assert {await who(pool, *call(), affinity=key) for _ in range(3)} == {moved}
    others = [k for k, h in homes.items() if h != home]
    assert [await who(pool, *call(), affinity=k) for k in others] == [homes[k] for k in others]  # none moved
    victim.fail = None
    clock.t += 5
    assert await who(pool, *call(), affinity=key) == home


async def test_least_in_flight_avoids_a_busy_endpoint() -> None:
    pool, members, _ = make(balance="least_in_flight")
    members[0].gate = asyncio.Event()
    busy = asyncio.create_task(pool.request(*call()))
    async with asyncio.timeout(5):
        await members[0].entered.wait()
    seen = Counter([await who(pool, *call()) for _ in range(4)])
    assert seen[URLS[0]] == 0 and seen[URLS[1]] == seen[URLS[2]] == 2
    members[0].gate.set()
    await busy


async def test_a_non_idempotent_call_is_not_retried_after_it_may_have_been_sent() -> None:
    pool, members, _ = make()
    members[0].fail = "reset"
    with pytest.raises(UpstreamUnavailable):
        await pool.request(*call())
    assert sum(m.calls["tools/call"] for m in members) == 1


async def test_a_non_idempotent_call_refused_before_sending_goes_to_another_endpoint() -> None:
    pool, members, _ = make()
    members[0].fail = "refused"
    assert await who(pool, *call()) != URLS[0]
    assert sum(m.calls["tools/call"] for m in members) == 2


async def test_safe_calls_are_retried_after_sending() -> None:
    pool, members, _ = make(retry_tools=["safe_*"])
    members[0].fail = members[1].fail = "reset"
    members[2].tools = [{"name": "look", "annotations": {"readOnlyHint": True}},
                        {"name": "again", "annotations": {"idempotentHint": True}}, {"name": "write"}]
    await pool.request("tools/list", {})  # discovery goes to the first endpoint that answers
    assert await who(pool, "resources/read", {"uri": "x://1"}) == URLS[2]
    for name in ("look", "again", "safe_thing"):
        assert await who(pool, *call(name)) == URLS[2]
    with pytest.raises(UpstreamUnavailable):
        while True:  # round robin reaches a failing endpoint with the unannotated tool
            await pool.request(*call("write"))


async def test_retries_stop_at_the_budget() -> None:
    pool, members, _ = make(retry_budget=0.0, retry_min_per_second=0.1)  # 1 retry per 10 s
    members[0].fail = "reset"
    read = ("resources/read", {"uri": "x://1"})
    assert await who(pool, *read) != URLS[0]  # the one retry
    while True:  # round robin comes back to the failing endpoint: now there is no retry left
        before = members[0].calls["resources/read"]
        try:
            await pool.request(*read)
        except UpstreamUnavailable:
            break
        assert members[0].calls["resources/read"] == before
    assert members[0].calls["resources/read"] == before + 1 == 2


async def test_every_breaker_open_is_a_fast_error_with_retry_after() -> None:
    pool, members, clock = make(breaker={"failures": 1, "open_seconds": 4},
                                ejection={"max_ejected_percent": 0})
    for m in members:
        m.fail = "refused"
    with pytest.raises(UpstreamUnavailable):
        await pool.request(*call())  # tries all three, each breaker opens
    called = sum(m.calls["tools/call"] for m in members)
    assert called == 3
    clock.t += 1
    with pytest.raises(UpstreamUnavailable) as caught:
        await pool.request(*call())
    assert sum(m.calls["tools/call"] for m in members) == called  # nothing was sent
    err = caught.value.to_error()
    assert err["code"] == -32001 and "'up'" in err["message"]
    assert err["data"] == {"upstream": "up", "retry_after_ms": 3000}
    assert [s["state"] for s in pool.endpoint_status()] == ["open"] * 3
    for m in members:
        m.fail = None
    clock.t += 3
    assert await who(pool, *call()) in URLS  # half-open trial succeeds
    assert [s["breaker"] for s in pool.endpoint_status()].count("closed") == 1


async def test_at_most_max_ejected_percent_are_ejected() -> None:
    pool, members, _ = make(ejection={"consecutive_failures": 1, "max_ejected_percent": 50},
                            breaker={"failures": 100})
    members[0].fail = members[1].fail = "refused"
    for _ in range(6):
        await pool.request(*call())
    states = [s["state"] for s in pool.endpoint_status()]
    assert states.count("ejected") == 1, states
    status = pool.endpoint_status()[states.index("ejected")]
    assert status["ejected_until"] is not None and status["url"] in URLS


async def test_discovery_uses_the_first_available_endpoint_and_notifications_of_all_arrive() -> None:
    pool, members, _ = make()
    got: list[tuple[str, str]] = []
    pool.on_notification = lambda name, msg: got.append((name, msg["method"]))
    await pool.start()
    assert pool.server_info == {"name": URLS[0]}
    for _ in range(3):
        await pool.request("tools/list", {})
    assert [m.calls["tools/list"] for m in members] == [3, 0, 0]
    for m in members:
        m.on_notification("up", {"method": "notifications/tools/list_changed"})
    assert got == [("up", "notifications/tools/list_changed")] * 3


async def test_active_checks_take_an_endpoint_out_and_bring_it_back_at_their_thresholds() -> None:
    pool, members, _ = make(health_check={"healthy": 2, "unhealthy": 3, "timeout": 1})
    members[0].fail = "reset"
    for expected in ("healthy", "healthy", "down"):
        await pool.check_once()
        assert pool.endpoint_status()[0]["state"] == expected
    assert members[0].calls["ping"] == 3 and members[1].calls["ping"] == 3
    assert URLS[0] not in {await who(pool, *call()) for _ in range(6)}
    members[0].fail = None
    await pool.check_once()
    assert pool.endpoint_status()[0]["state"] == "down"
    await pool.check_once()
    assert pool.endpoint_status()[0]["state"] == "healthy"
    assert URLS[0] in {await who(pool, *call()) for _ in range(3)}


async def test_a_hanging_endpoint_fails_its_check_by_the_timeout() -> None:
    pool, members, _ = make(health_check={"unhealthy": 1, "timeout": 0.05})
    members[2].gate = asyncio.Event()  # never set: the ping hangs
    await pool.check_once()
    assert [s["state"] for s in pool.endpoint_status()] == ["healthy", "healthy", "down"]


async def test_a_retry_gets_only_what_is_left_of_the_timeout() -> None:
    pool, members, _ = make(timeout=0.2)
    members[0].fail = "reset"
    members[1].gate = members[2].gate = asyncio.Event()  # whichever gets the retry hangs
    with pytest.raises(UpstreamTimeout) as caught:
        async with asyncio.timeout(5):
            await pool.request("resources/read", {"uri": "x://1"})
    assert "within 0.2s (2 attempts)" in caught.value.message
    assert [s["in_flight"] for s in pool.endpoint_status()] == [0, 0, 0]
