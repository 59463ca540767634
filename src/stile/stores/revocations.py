"""Revoked legacy sessions: the nonces of DELETEd session ids, shared by every replica and restart.

A sealed session id cannot be withdrawn from the client, so ending it means remembering its nonce until
the id would have expired anyway (issue time + `limits.session_lifetime`). One table (default
``stile_revoked_sessions``: nonce, expires_at as Unix seconds) in the state store, created on first use
(SQLite or PostgreSQL, the engine patterns of `stores/keys.py`); expired rows are pruned when a session is
revoked, so the table holds at most the sessions revoked within one lifetime.

`MemoryRevocations` is the process-local fallback for a gateway built without a state store (tests,
embedding); `serve` always has one.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Protocol

import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from stile.stores.keys import async_url, sqlite_wal
from stile.stores.tables import ensure_tables

DEFAULT_TABLE = "stile_revoked_sessions"
MAX_IN = 500  # nonces per IN (...) query
_TABLE_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


class RevocationStore(Protocol):
    async def revoke(self, nonce: str, expires_at: float) -> None:
        """Remember `nonce` as revoked until `expires_at` (Unix seconds)."""
        ...

    async def is_revoked(self, nonce: str) -> bool:
        ...

    async def aclose(self) -> None:
        ...


class MemoryRevocations:
    """Process-local revocations (no state store): bounded by pruning expired entries on revoke."""

    def __init__(self) -> None:
        self._revoked: dict[str, float] = {}

    async def revoke(self, nonce: str, expires_at: float) -> None:
        now = time.time()
        self._revoked = {n: e for n, e in self._revoked.items() if e > now}
        self._revoked[nonce] = expires_at

    async def is_revoked(self, nonce: str) -> bool:
        return nonce in self._revoked

    async def revoked_among(self, nonces: list[str]) -> set[str]:
        return {n for n in nonces if n in self._revoked}

    async def aclose(self) -> None:
        self._revoked.clear()


def _table(name: str) -> sa.Table:
    if not _TABLE_RE.fullmatch(name):
        raise ValueError(f"invalid table name {name!r}")
    return sa.Table(
        name,
        sa.MetaData(),
        sa.Column("nonce", sa.String(64), primary_key=True),
        sa.Column("expires_at", sa.Float, nullable=False, index=True),
    )


class SqlRevocations:
    """`RevocationStore` on SQLAlchemy 2 async (SQLite or PostgreSQL)."""

    def __init__(self, url: str, *, table: str = DEFAULT_TABLE) -> None:
        engine = create_async_engine(async_url(url))
        if make_url(url).get_backend_name() == "sqlite":
            sa.event.listen(engine.sync_engine, "connect", sqlite_wal)
        self._engine: AsyncEngine = engine
        self._table = _table(table)
        self._ready = False
        self._lock = asyncio.Lock()

    async def _ensure(self) -> None:
        if self._ready:
            return
        async with self._lock:
            if not self._ready:
                await ensure_tables(self._engine, self._table.metadata)
                self._ready = True

    async def revoke(self, nonce: str, expires_at: float) -> None:
        await self._ensure()
        t = self._table
        async with self._engine.begin() as conn:
            await conn.execute(sa.delete(t).where(t.c.expires_at < time.time()))
            existing = (await conn.execute(sa.select(t.c.nonce).where(t.c.nonce == nonce))).first()
            if existing is None:
                try:
                    async with conn.begin_nested():
                        await conn.execute(t.insert().values(nonce=nonce, expires_at=expires_at))
                except IntegrityError:
                    pass  # revoked concurrently (the same DELETE on two replicas)

    async def is_revoked(self, nonce: str) -> bool:
        await self._ensure()
        t = self._table
        async with self._engine.connect() as conn:
            row = (await conn.execute(sa.select(t.c.nonce).where(t.c.nonce == nonce))).first()
        return row is not None

    async def revoked_among(self, nonces: list[str]) -> set[str]:
        """Which of `nonces` are revoked: one query for many sessions' checks (at most `MAX_IN` at a time)."""
        await self._ensure()
        t = self._table
        found: set[str] = set()
        async with self._engine.connect() as conn:
            for i in range(0, len(nonces), MAX_IN):
                rows = await conn.execute(sa.select(t.c.nonce).where(t.c.nonce.in_(nonces[i:i + MAX_IN])))
                found.update(r[0] for r in rows)
        return found

    async def aclose(self) -> None:
        await self._engine.dispose()


def open_revocation_store(url: str | None, *, table: str = DEFAULT_TABLE) -> RevocationStore:
    """The revocations at state store `url`, or process-local ones when there is no state store."""
    return SqlRevocations(url, table=table) if url else MemoryRevocations()
