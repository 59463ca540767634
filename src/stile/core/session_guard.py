"""Opening and ending legacy sessions: sealed id, owner, lifetime and revocation, in that order.

`SessionSealer` proves an id was minted by a gateway holding the key; this guard adds what the id alone
cannot say: it is older than `limits.session_lifetime` (the issue time is sealed in it), its owner is not
the caller, or it was DELETEd (on any replica, before any restart: the nonce is in the state store's
revocation table until the id would have expired anyway).

The hot path does no per-request query: a nonce found not revoked is trusted for `auth.key_cache_seconds`
(the same window as a revoked API key), a revoked one is remembered locally until it expires. A DELETE
on another replica therefore takes effect here within that window. The checks due in one loop tick share
one query (`revoked_among`, when the store has it): sessions opened together expire from the cache together,
and one query per session each window opened a pool connection (and an aiosqlite thread) apiece.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import asyncpg  # type: ignore[import-untyped]
from sqlalchemy.exc import SQLAlchemyError

from stile.core.sessions import LegacySession, SessionSealer
from stile.stores.revocations import RevocationStore
from stile.wire.errors import SessionNotFound, StileError

MAX_CACHED = 100_000
_DB_ERRORS = (SQLAlchemyError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError)


class SessionStoreUnavailable(StileError):
    """The revocation table could not be read: fail closed, but as an outage, not as the client's fault."""

    jsonrpc_code = -32000
    http_status = 503


class SessionGuard:
    def __init__(self, sealer: SessionSealer, store: RevocationStore, *, lifetime: float, cache_seconds: float,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time) -> None:
        self.sealer = sealer
        self.store = store
        self.lifetime = lifetime
        self.cache_seconds = cache_seconds
        self._clock = clock
        self._wall = wall
        self._live: OrderedDict[str, float] = OrderedDict()  # nonce -> when it was last seen not revoked
        self._revoked: OrderedDict[str, float] = OrderedDict()  # nonce -> expiry (wall clock)
        self._due: dict[str, asyncio.Future[bool]] = {}  # nonces whose check runs at the end of this tick
        self._asking: set[asyncio.Future[set[str]]] = set()  # queries in flight (held until they end)

    async def open(self, sid: str, vs: str, owner: str) -> LegacySession:
        """The session `sid` names on `vs` for `owner`; SessionNotFound (404) if it is not usable."""
        session = self.sealer.open(sid, vs)
        if session is None or session.owner != owner or self._wall() - session.issued > self.lifetime:
            raise SessionNotFound("Session not found")
        seen = self._live.get(session.nonce)  # the hot path: checked recently, no await
        if seen is not None and self._clock() - seen < self.cache_seconds:
            return session
        if await self._is_revoked(session.nonce, session.issued + self.lifetime):
            raise SessionNotFound("Session not found")
        return session

    async def close(self, session: LegacySession) -> None:
        """Revoke the session everywhere (until it would have expired) and forget it here."""
        expires = session.issued + self.lifetime
        try:
            await self.store.revoke(session.nonce, expires)
        except _DB_ERRORS as exc:
            raise SessionStoreUnavailable("cannot record the session's end: state store unavailable") from exc
        self.remember_revoked(session.nonce, expires)
        self.sealer.forget(session.nonce)

    async def _is_revoked(self, nonce: str, expires: float) -> bool:
        if nonce in self._revoked:
            return True
        now = self._clock()
        seen = self._live.get(nonce)
        if seen is not None and now - seen < self.cache_seconds:
            return False
        try:
            revoked = await self._ask(nonce)
        except _DB_ERRORS as exc:
            raise SessionStoreUnavailable("cannot check the session: state store unavailable") from exc
        if revoked:
            self.remember_revoked(nonce, expires)
            return True
        if self.cache_seconds > 0:
            self._live[nonce] = now
            self._live.move_to_end(nonce)
            if len(self._live) > MAX_CACHED:
                self._live.popitem(last=False)
        return False

    async def _ask(self, nonce: str) -> bool:
        """The store's answer for `nonce`, asked together with every other check of this tick."""
        among = getattr(self.store, "revoked_among", None)
        if among is None:
            return await self.store.is_revoked(nonce)
        future = self._due.get(nonce)
        if future is None:
            future = self._due[nonce] = asyncio.get_running_loop().create_future()
            if len(self._due) == 1:
                asyncio.get_running_loop().call_soon(self._ask_due, among)
        return await asyncio.shield(future)  # a cancelled caller must not cancel the others' answer

    def _ask_due(self, among: Callable[[list[str]], Any]) -> None:
        due, self._due = self._due, {}
        task = asyncio.ensure_future(among(list(due)))
        self._asking.add(task)

        def answer(done: asyncio.Future[set[str]]) -> None:
            self._asking.discard(task)
            exc = None if done.cancelled() else done.exception()
            for nonce, future in due.items():
                if future.done():
                    continue
                if done.cancelled():
                    future.cancel()
                elif exc is not None:
                    future.set_exception(exc)
                    future.add_done_callback(_retrieved)  # its callers may all have been cancelled
                else:
                    future.set_result(nonce in done.result())

        task.add_done_callback(answer)

    def remember_revoked(self, nonce: str, expires: float) -> None:
        self._live.pop(nonce, None)
        self._revoked[nonce] = expires
        self._revoked.move_to_end(nonce)
        now = self._wall()
        while self._revoked and (len(self._revoked) > MAX_CACHED or next(iter(self._revoked.values())) < now):
            self._revoked.popitem(last=False)

    async def aclose(self) -> None:
        await self.store.aclose()


def _retrieved(future: asyncio.Future[bool]) -> None:
    future.exception()
