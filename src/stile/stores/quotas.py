"""Quota counters in the state store (SQLite or Postgres, SQLAlchemy async): one row per (quota, subject, window).

`add` increments rows atomically in the database (`INSERT ... ON CONFLICT DO UPDATE SET used = used + n`),
so replicas flushing at the same time never lose each other's counts; `current` reads every row of the given
windows (what all replicas have flushed). The table (default `stile_quota_usage`) is created on first use.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from stile.stores.keys import async_url
from stile.stores.tables import ensure_tables

DEFAULT_TABLE = "stile_quota_usage"
_TABLE_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
CounterKey = tuple[str, str, str]  # (quota, subject, window)


class QuotaStore:
    def __init__(self, url: str, table: str = DEFAULT_TABLE) -> None:
        if not _TABLE_RE.fullmatch(table):
            raise ValueError(f"quota table name {table!r} must match {_TABLE_RE.pattern}")
        self.engine: AsyncEngine = create_async_engine(async_url(url))
        self.meta = sa.MetaData()
        self.table = sa.Table(
            table, self.meta,
            sa.Column("quota", sa.String(64), primary_key=True),
            sa.Column("subject", sa.String(256), primary_key=True),
            sa.Column("window", sa.String(16), primary_key=True),
            sa.Column("used", sa.Float, nullable=False, default=0.0),
        )
        self._ready = False

    async def _ensure(self) -> None:
        if not self._ready:
            await ensure_tables(self.engine, self.meta)
            self._ready = True

    async def add(self, deltas: Mapping[CounterKey, float]) -> None:
        """Add every delta to its row, in one transaction."""
        if not deltas:
            return
        await self._ensure()
        insert = postgresql.insert if self.engine.dialect.name == "postgresql" else sqlite.insert
        async with self.engine.begin() as conn:
            for (quota, subject, window), n in deltas.items():
                stmt = insert(self.table).values(quota=quota, subject=subject, window=window, used=n)
                stmt = stmt.on_conflict_do_update(index_elements=["quota", "subject", "window"],
                                                  set_={"used": self.table.c.used + n})
                await conn.execute(stmt)

    async def current(self, windows: Iterable[str]) -> dict[CounterKey, float]:
        await self._ensure()
        t = self.table
        async with self.engine.connect() as conn:
            rows = await conn.execute(sa.select(t.c.quota, t.c.subject, t.c.window, t.c.used)
                                      .where(t.c.window.in_(list(windows))))
            return {(r.quota, r.subject, r.window): float(r.used) for r in rows}

    async def all_rows(self) -> dict[CounterKey, float]:
        await self._ensure()
        t = self.table
        async with self.engine.connect() as conn:
            rows = await conn.execute(sa.select(t.c.quota, t.c.subject, t.c.window, t.c.used))
            return {(r.quota, r.subject, r.window): float(r.used) for r in rows}

    async def aclose(self) -> None:
        await self.engine.dispose()
