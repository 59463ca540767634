"""Secrets in the state store: table `stile_secrets`, one row per (name, version), values envelope-encrypted.

Same patterns as `stores/keys.py` (SQLAlchemy 2 async, SQLite or PostgreSQL, table created on first use).
`set` creates version 1, `rotate` adds a version (the newest is the one used), `delete` drops every version,
`rewrap` re-seals every data key under a new master key, row by row (each row is readable under the old or
the new key at every moment). Values only leave this module through `latest` / `versions`.
"""

from __future__ import annotations

import asyncio
import builtins
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from stile.stores.keys import _UtcDateTime, async_url, sqlite_wal
from stile.stores.tables import ensure_tables
from stile.vault.keyring import Keyring, VaultError

DEFAULT_TABLE = "stile_secrets"
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
MAX_VALUE = 64 * 1024


@dataclass(frozen=True)
class SecretInfo:
    """What `list` shows: never the value."""

    name: str
    versions: int
    latest: int
    created_at: datetime
    updated_at: datetime


def _table(name: str) -> sa.Table:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,62}", name):
        raise ValueError(f"invalid table name {name!r}")
    return sa.Table(
        name, sa.MetaData(),
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True),
        sa.Column("created_at", _UtcDateTime, nullable=False),
        sa.Column("key_id", sa.String(16), nullable=False),
        sa.Column("wrapped_key", sa.Text, nullable=False),
        sa.Column("ciphertext", sa.Text, nullable=False),
    )


def check_name(name: str) -> str:
    if not NAME_RE.fullmatch(name):
        raise VaultError(f"bad secret name {name!r}: 1-128 of [A-Za-z0-9_.-], starting with a letter or digit")
    return name


def _aad(name: str, version: int) -> bytes:
    return f"stile-secret|{name}|{version}".encode()


class SecretStore:
    def __init__(self, url: str, keyring: Keyring, *, table: str = DEFAULT_TABLE) -> None:
        self._engine: AsyncEngine = create_async_engine(async_url(url))
        if self._engine.dialect.name == "sqlite":
            sa.event.listen(self._engine.sync_engine, "connect", sqlite_wal)
        self._table = _table(table)
        self.keyring = keyring
        self._ready = False
        self._lock = asyncio.Lock()

    async def _ensure(self) -> None:
        if self._ready:
            return
        async with self._lock:
            if not self._ready:
                await ensure_tables(self._engine, self._table.metadata)
                self._ready = True

    def _check_value(self, value: bytes) -> None:
        if not value:
            raise VaultError("refusing an empty secret value")
        if len(value) > MAX_VALUE:
            raise VaultError(f"a secret value is at most {MAX_VALUE} bytes")

    async def _latest_version(self, name: str) -> int:
        t = self._table
        async with self._engine.connect() as conn:
            got = (await conn.execute(sa.select(sa.func.max(t.c.version)).where(t.c.name == name))).scalar()
        return int(got or 0)

    async def _insert(self, name: str, version: int, value: bytes) -> int:
        kid, wrapped, ciphertext = self.keyring.seal(value, _aad(name, version))
        try:
            async with self._engine.begin() as conn:
                await conn.execute(self._table.insert().values(
                    name=name, version=version, created_at=datetime.now(UTC), key_id=kid, wrapped_key=wrapped,
                    ciphertext=ciphertext))
        except IntegrityError as exc:
            raise VaultError(f"secret {name!r} changed concurrently; try again") from exc
        return version

    async def set(self, name: str, value: bytes) -> int:
        """Store version 1 of a new secret; VaultError if it exists (use `rotate`)."""
        check_name(name)
        self._check_value(value)
        await self._ensure()
        if await self._latest_version(name):
            raise VaultError(f"secret {name!r} already exists: use `stile secrets rotate {name}`")
        return await self._insert(name, 1, value)

    async def rotate(self, name: str, value: bytes, *, create: bool = False) -> int:
        """Add a version (the new newest); VaultError if the secret does not exist (unless `create`)."""
        check_name(name)
        self._check_value(value)
        await self._ensure()
        latest = await self._latest_version(name)
        if not latest and not create:
            raise VaultError(f"no secret named {name!r} (create it with `stile secrets set {name}`)")
        return await self._insert(name, latest + 1, value)

    async def delete(self, name: str) -> bool:
        await self._ensure()
        async with self._engine.begin() as conn:
            res = await conn.execute(sa.delete(self._table).where(self._table.c.name == name))
        return bool(res.rowcount)

    async def prune(self, name: str, keep: int = 1) -> int:
        """Drop all but the newest `keep` versions of a secret (per-user OAuth grants); returns rows dropped."""
        await self._ensure()
        t = self._table
        newest = await self._latest_version(name)
        if newest <= keep:
            return 0
        async with self._engine.begin() as conn:
            res = await conn.execute(sa.delete(t).where(t.c.name == name, t.c.version <= newest - keep))
        return int(res.rowcount or 0)

    async def list(self) -> builtins.list[SecretInfo]:
        await self._ensure()
        t = self._table
        stmt = (sa.select(t.c.name, sa.func.count(), sa.func.max(t.c.version), sa.func.min(t.c.created_at),
                          sa.func.max(t.c.created_at)).group_by(t.c.name).order_by(t.c.name))
        async with self._engine.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        return [SecretInfo(r[0], int(r[1]), int(r[2]), _utc(r[3]), _utc(r[4])) for r in rows]

    async def latest(self, names: Iterable[str]) -> dict[str, bytes]:
        """The newest value of each named secret that exists (one query)."""
        wanted = sorted(set(names))
        if not wanted:
            return {}
        await self._ensure()
        t = self._table
        newest = (sa.select(t.c.name, sa.func.max(t.c.version).label("v")).where(t.c.name.in_(wanted))
                  .group_by(t.c.name).subquery())
        stmt = sa.select(t).join(newest, sa.and_(t.c.name == newest.c.name, t.c.version == newest.c.v))
        async with self._engine.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        return {r.name: self.keyring.open(r.key_id, r.wrapped_key, r.ciphertext, _aad(r.name, r.version))
                for r in rows}

    async def versions(self, name: str, limit: int = 3) -> builtins.list[tuple[int, bytes]]:
        """The newest `limit` versions of a secret, newest first."""
        await self._ensure()
        t = self._table
        stmt = sa.select(t).where(t.c.name == name).order_by(t.c.version.desc()).limit(limit)
        async with self._engine.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        return [(r.version, self.keyring.open(r.key_id, r.wrapped_key, r.ciphertext, _aad(r.name, r.version)))
                for r in rows]

    async def rewrap(self, new: Keyring) -> int:
        """Re-wrap every data key under `new.current` (values are not re-encrypted); returns rows changed.

        `self.keyring` must read every row; one short transaction per row, so readers never wait long."""
        await self._ensure()
        t = self._table
        async with self._engine.connect() as conn:
            rows = (await conn.execute(sa.select(t.c.name, t.c.version, t.c.key_id, t.c.wrapped_key))).all()
        target = new.current_id
        changed = 0
        for r in rows:
            if r.key_id == target:
                continue
            data_key = self.keyring.unwrap(r.key_id, r.wrapped_key)
            wrapped = new.wrap(data_key, target)
            async with self._engine.begin() as conn:
                await conn.execute(sa.update(t).where(t.c.name == r.name, t.c.version == r.version,
                                                      t.c.key_id == r.key_id)
                                   .values(key_id=target, wrapped_key=wrapped))
            changed += 1
        return changed

    async def aclose(self) -> None:
        await self._engine.dispose()


def _utc(value: datetime) -> datetime:
    if isinstance(value, str):  # aggregate over a SQLite column comes back as text
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
