"""SessionGuard: lifetime, owner and revocation checks, and no revocation query per request."""

from __future__ import annotations

import asyncio
import secrets

import pytest

from stile.core.context import Principal
from stile.core.session_guard import SessionGuard, SessionStoreUnavailable
from stile.core.sessions import SessionSealer, owner_of
from stile.stores.revocations import MemoryRevocations
from stile.wire.errors import SessionNotFound


class CountingRevocations(MemoryRevocations):
    def __init__(self) -> None:
        super().__init__()
        self.queries = 0
        self.down = False

    async def is_revoked(self, nonce: str) -> bool:
        self.queries += 1
        if self.down:
            raise OSError("connection refused")
        return await super().is_revoked(nonce)

    async def revoked_among(self, nonces: list[str]) -> set[str]:
        self.queries += 1
        await asyncio.sleep(0)  # a real query suspends
        if self.down:
            raise OSError("connection refused")
        return await super().revoked_among(nonces)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def guard(store: CountingRevocations, clock: Clock, *, lifetime: float = 3600, cache: float = 2.0,
          wall: Clock | None = None) -> SessionGuard:
    return SessionGuard(SessionSealer(secrets.token_bytes(32)), store, lifetime=lifetime, cache_seconds=cache,
                        clock=clock, wall=wall or Clock())


async def test_an_open_session_is_checked_against_the_store_once_per_cache_window() -> None:
    store, clock = CountingRevocations(), Clock()
    g = guard(store, clock)
    sid, _ = g.sealer.mint("2025-11-25", "vs", {}, None)
    for _ in range(100):
        await g.open(sid, "vs", "")
    assert store.queries == 1
    clock.now += 2.5
    await g.open(sid, "vs", "")
    assert store.queries == 2


async def test_a_session_revoked_elsewhere_is_refused_once_the_window_passes() -> None:
    store, clock = CountingRevocations(), Clock()
    here, there = guard(store, clock), guard(store, clock)
    there.sealer = here.sealer  # same key, as replicas share STILE_SESSION_KEY
    sid, _ = here.sealer.mint("2025-11-25", "vs", {}, None)
    session = await here.open(sid, "vs", "")
    await there.close(session)
    with pytest.raises(SessionNotFound):
        await there.open(sid, "vs", "")
    await here.open(sid, "vs", "")  # still inside the window here
    clock.now += 2.5
    with pytest.raises(SessionNotFound):
        await here.open(sid, "vs", "")
    queries = store.queries
    with pytest.raises(SessionNotFound):
        await here.open(sid, "vs", "")
    assert store.queries == queries  # a revoked nonce is remembered locally


async def test_an_expired_session_is_refused_without_a_query() -> None:
    store, clock, wall = CountingRevocations(), Clock(), Clock()
    g = guard(store, clock, lifetime=60, wall=wall)
    sid, sess = g.sealer.mint("2025-11-25", "vs", {}, None)
    wall.now = sess.issued + 61
    with pytest.raises(SessionNotFound):
        await g.open(sid, "vs", "")
    assert store.queries == 0


async def test_another_owner_gets_404() -> None:
    g = guard(CountingRevocations(), Clock())
    owner = owner_of(Principal(agent="a", method="api_key"))
    sid, _ = g.sealer.mint("2025-11-25", "vs", {}, None, owner)
    await g.open(sid, "vs", owner)
    with pytest.raises(SessionNotFound):
        await g.open(sid, "vs", owner_of(Principal(agent="b", method="api_key")))


async def test_an_unreachable_store_fails_closed_as_an_outage_not_a_client_error() -> None:
    store, clock = CountingRevocations(), Clock()
    g = guard(store, clock)
    sid, _ = g.sealer.mint("2025-11-25", "vs", {}, None)
    store.down = True
    with pytest.raises(SessionStoreUnavailable) as caught:
        await g.open(sid, "vs", "")
    assert caught.value.http_status == 503


async def test_checks_due_together_share_one_query_and_each_gets_its_own_answer() -> None:
    store, clock = CountingRevocations(), Clock()
    g = guard(store, clock)
    sids = [g.sealer.mint("2025-11-25", "vs", {}, None)[0] for _ in range(40)]
    revoked = g.sealer.open(sids[7], "vs")
    assert revoked is not None
    await store.revoke(revoked.nonce, 10**10)  # revoked on another replica: this guard has not seen it
    results = await asyncio.gather(*(g.open(sid, "vs", "") for sid in sids), return_exceptions=True)
    assert store.queries == 1
    assert isinstance(results[7], SessionNotFound)
    assert all(not isinstance(r, BaseException) for i, r in enumerate(results) if i != 7)
    await asyncio.gather(*(g.open(sid, "vs", "") for i, sid in enumerate(sids) if i != 7))
    assert store.queries == 1  # all cached now


async def test_a_cancelled_check_does_not_cancel_the_others_and_an_outage_fails_them_all() -> None:
    store, clock = CountingRevocations(), Clock()
    g = guard(store, clock)
    a, b = (g.sealer.mint("2025-11-25", "vs", {}, None)[0] for _ in range(2))
    first = asyncio.ensure_future(g.open(a, "vs", ""))
    second = asyncio.ensure_future(g.open(b, "vs", ""))
    await asyncio.sleep(0)
    first.cancel()
    assert (await second).nonce and first.cancelled()
    store.down = True
    c, d = (g.sealer.mint("2025-11-25", "vs", {}, None)[0] for _ in range(2))
    results = await asyncio.gather(g.open(c, "vs", ""), g.open(d, "vs", ""), return_exceptions=True)
    assert all(isinstance(r, SessionStoreUnavailable) for r in results)
