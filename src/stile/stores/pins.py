"""Pins: the approved (and the pending) definition hash of every tool, prompt and template, per upstream.

One table (default ``stile_pins``) in the state store, created on first use (SQLite or PostgreSQL, the
engine patterns of `stores/keys.py`); every replica reads it, so an approval made by `stile pins approve`
reaches them all. A row is (upstream, kind, name) -> approved hash and canonical definition (null when
revoked or never approved), pending hash and definition (what the upstream offers now, when it differs),
updated_at. The row of kind ``upstream`` (name ``""``) marks an upstream as seen: items that appear after
it are new, not first-seen.

`MemoryPinStore` is the process-local fallback for a gateway built without a state store (tests, embedding).
"""

from __future__ import annotations

import asyncio
import builtins
import re
import time
from dataclasses import dataclass, replace
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from stile.stores.keys import async_url
from stile.stores.tables import ensure_tables

DEFAULT_TABLE = "stile_pins"
BATCH = 500  # rows per INSERT (8 bind parameters each; drivers cap parameters per statement)
SEEN = "upstream"  # kind of the row marking an upstream as seen
_TABLE_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


@dataclass(frozen=True)
class PinRow:
    upstream: str
    kind: str  # tool | prompt | template | upstream (the seen marker)
    name: str
    approved: str | None = None
    approved_definition: str | None = None
    pending: str | None = None
    pending_definition: str | None = None
    updated_at: float = 0.0

    @property
    def key(self) -> tuple[str, str, str]:
        return self.upstream, self.kind, self.name


class PinStore(Protocol):
    async def rows(self, upstream: str | None = None) -> builtins.list[PinRow]:
        """Every row (of one upstream), ordered by upstream, kind, name."""
        ...

    async def add(self, rows: builtins.list[PinRow]) -> None:
        """Insert rows whose key is not present yet (a row another replica wrote first wins)."""
        ...

    async def set_pending(self, upstream: str, kind: str, name: str, pending: str | None,
                          definition: str | None) -> None:
        """Record (or with None, clear) what an upstream offers that is not approved; creates the row."""
        ...

    async def approve(self, upstream: str, kind: str, name: str) -> bool:
        """Make the pending definition the approved one; False if there is nothing pending."""
        ...

    async def revoke(self, upstream: str, kind: str, name: str) -> bool:
        """Withdraw the approval (the definition becomes pending); False if nothing was approved."""
        ...

    async def aclose(self) -> None:
        ...


def _table(name: str) -> sa.Table:
    if not _TABLE_RE.fullmatch(name):
        raise ValueError(f"invalid table name {name!r}")
    return sa.Table(
        name, sa.MetaData(),
        sa.Column("upstream", sa.String(64), primary_key=True),
        sa.Column("kind", sa.String(16), primary_key=True),
        sa.Column("name", sa.String(1024), primary_key=True),
        sa.Column("approved", sa.String(80), nullable=True),
        sa.Column("approved_definition", sa.Text, nullable=True),
        sa.Column("pending", sa.String(80), nullable=True),
        sa.Column("pending_definition", sa.Text, nullable=True),
        sa.Column("updated_at", sa.Float, nullable=False),
    )


def _row(r: Any) -> PinRow:
    return PinRow(r.upstream, r.kind, r.name, r.approved, r.approved_definition, r.pending, r.pending_definition,
                  r.updated_at)


class SqlPinStore:
    """`PinStore` on SQLAlchemy 2 async (SQLite or PostgreSQL)."""

    def __init__(self, url: str, *, table: str = DEFAULT_TABLE) -> None:
        self._engine: AsyncEngine = create_async_engine(async_url(url))
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

    def _where(self, upstream: str, kind: str, name: str) -> Any:
        t = self._table
        return sa.and_(t.c.upstream == upstream, t.c.kind == kind, t.c.name == name)

    async def rows(self, upstream: str | None = None) -> builtins.list[PinRow]:
        await self._ensure()
        t = self._table
        stmt = sa.select(t).order_by(t.c.upstream, t.c.kind, t.c.name)
        if upstream is not None:
            stmt = stmt.where(t.c.upstream == upstream)
        async with self._engine.connect() as conn:
            return [_row(r) for r in (await conn.execute(stmt)).all()]

    async def add(self, rows: builtins.list[PinRow]) -> None:
        if not rows:
            return
        await self._ensure()
        values = [{"upstream": r.upstream, "kind": r.kind, "name": r.name, "approved": r.approved,
                   "approved_definition": r.approved_definition, "pending": r.pending,
                   "pending_definition": r.pending_definition, "updated_at": r.updated_at or time.time()}
                  for r in rows]
        dialect = postgresql if self._engine.dialect.name == "postgresql" else sqlite
        async with self._engine.begin() as conn:
            for start in range(0, len(values), BATCH):  # bound the bind parameters of one statement
                chunk = values[start:start + BATCH]
                await conn.execute(dialect.insert(self._table).values(chunk).on_conflict_do_nothing())

    async def set_pending(self, upstream: str, kind: str, name: str, pending: str | None,
                          definition: str | None) -> None:
        await self._ensure()
        async with self._engine.begin() as conn:
            done = await conn.execute(sa.update(self._table).where(self._where(upstream, kind, name))
                                      .values(pending=pending, pending_definition=definition, updated_at=time.time()))
            if done.rowcount == 0 and pending is not None:
                dialect = postgresql if self._engine.dialect.name == "postgresql" else sqlite
                await conn.execute(dialect.insert(self._table).values(
                    upstream=upstream, kind=kind, name=name, pending=pending, pending_definition=definition,
                    updated_at=time.time()).on_conflict_do_nothing())

    async def approve(self, upstream: str, kind: str, name: str) -> bool:
        await self._ensure()
        t = self._table
        stmt = (sa.update(t).where(self._where(upstream, kind, name), t.c.pending.is_not(None))
                .values(approved=t.c.pending, approved_definition=t.c.pending_definition, pending=None,
                        pending_definition=None, updated_at=time.time()))
        async with self._engine.begin() as conn:
            return bool((await conn.execute(stmt)).rowcount)

    async def revoke(self, upstream: str, kind: str, name: str) -> bool:
        await self._ensure()
        t = self._table
        stmt = (sa.update(t).where(self._where(upstream, kind, name), t.c.approved.is_not(None))
                .values(pending=sa.func.coalesce(t.c.pending, t.c.approved),
                        pending_definition=sa.func.coalesce(t.c.pending_definition, t.c.approved_definition),
                        approved=None, approved_definition=None, updated_at=time.time()))
        async with self._engine.begin() as conn:
            return bool((await conn.execute(stmt)).rowcount)

    async def aclose(self) -> None:
        await self._engine.dispose()


class MemoryPinStore:
    """Process-local `PinStore` (no state store configured)."""

    def __init__(self) -> None:
        self._rows: dict[tuple[str, str, str], PinRow] = {}

    async def rows(self, upstream: str | None = None) -> builtins.list[PinRow]:
        return [r for _, r in sorted(self._rows.items()) if upstream is None or r.upstream == upstream]

    async def add(self, rows: builtins.list[PinRow]) -> None:
        for r in rows:
            self._rows.setdefault(r.key, replace(r, updated_at=r.updated_at or time.time()))

    async def set_pending(self, upstream: str, kind: str, name: str, pending: str | None,
                          definition: str | None) -> None:
        key = (upstream, kind, name)
        row = self._rows.get(key)
        if row is None and pending is None:
            return
        self._rows[key] = replace(row or PinRow(upstream, kind, name), pending=pending,
                                  pending_definition=definition, updated_at=time.time())

    async def approve(self, upstream: str, kind: str, name: str) -> bool:
        row = self._rows.get((upstream, kind, name))
        if row is None or row.pending is None:
            return False
        self._rows[row.key] = replace(row, approved=row.pending, approved_definition=row.pending_definition,
                                      pending=None, pending_definition=None, updated_at=time.time())
        return True

    async def revoke(self, upstream: str, kind: str, name: str) -> bool:
        row = self._rows.get((upstream, kind, name))
        if row is None or row.approved is None:
            return False
        self._rows[row.key] = replace(row, pending=row.pending or row.approved,
                                      pending_definition=row.pending_definition or row.approved_definition,
                                      approved=None, approved_definition=None, updated_at=time.time())
        return True

    async def aclose(self) -> None:
        return None


def open_pin_store(url: str | None, *, table: str = DEFAULT_TABLE) -> PinStore:
    """The pins at state store `url`, or process-local ones when there is no state store."""
    return SqlPinStore(url, table=table) if url else MemoryPinStore()
