"""API keys: issue, verify, list and revoke, stored only as salted hashes.

Key format: ``stile_<id>_<secret>``. ``<id>`` is 16 lowercase hex characters (public: it names the row so
`verify` reads exactly one record); ``<secret>`` is ``secrets.token_urlsafe(32)`` (32 random bytes, 256 bits).
The plaintext is returned once by `KeyStore.create` and never stored.

Hashing choice: ``hmac-sha256$<salt>$<digest>`` where ``digest = HMAC-SHA256(key=salt, msg=full_key)`` and
``salt`` is 16 random bytes per key (both base64url, unpadded). A slow KDF (scrypt, PBKDF2) exists to make
guessing *low-entropy* passwords expensive; a 256-bit random secret cannot be guessed whatever the hash cost, so
a slow KDF would only add latency on the request hot path (and then demand a verified-key cache, which cannot see
revocations made by another process). HMAC-SHA256 costs about a microsecond, so every `verify` reads the row
and sees revocation and expiry immediately, across processes. The per-key salt means equal keys never produce
equal hashes (e.g. the same key declared in two deployments' YAML). No server pepper: with 256-bit secrets it
would add key-management burden and no security. The ``hmac-sha256$`` tag leaves room for other schemes later.
Digests are compared with `hmac.compare_digest`.

`hash_for_config` produces the same format so keys can be declared hashed in YAML (GitOps), and
`verify_against_hash` checks a presented key against such a hash. Because the hash is fast, it is only safe for
high-entropy keys: `hash_for_config` refuses keys shorter than 32 characters.

Optional cache: ``open_key_store(url, cache_ttl=seconds)`` keeps successful verifications in memory for up to
``cache_ttl`` seconds (the HMAC is still recomputed and compared on every hit; expiry is still checked). `revoke`
on the same store drops the entry at once; a revocation made by another process is seen within ``cache_ttl``.
Off by default (``cache_ttl=0``), because the database read is the only real cost.

Schema: one table (default ``stile_api_keys``) created on first use with ``CREATE TABLE IF NOT EXISTS``
semantics; no Alembic migrations yet. Names are unique among *unrevoked* keys (a partial unique index), so a
revoked key's name can be reused; ids are unique forever.
"""

from __future__ import annotations

import asyncio
import base64
import builtins
import hashlib
import hmac
import json
import re
import secrets
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.engine import Dialect, make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from stile.stores.tables import ensure_tables

KEY_PREFIX = "stile_"
HASH_SCHEME = "hmac-sha256"
DEFAULT_TABLE = "stile_api_keys"
MIN_CONFIG_KEY_LEN = 32

_ID_RE = re.compile(r"[0-9a-f]{16}")
_SECRET_RE = re.compile(r"[A-Za-z0-9_-]{43}")
_TABLE_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


class KeyStoreError(Exception):
    """A key-store operation failed for a reason the caller should show the user."""


class DuplicateKeyName(KeyStoreError):
    """An unrevoked key with this name already exists."""


@dataclass(frozen=True)
class ApiKeyRecord:
    """What the store knows about a key; never holds the secret or its hash."""

    id: str
    name: str
    roles: tuple[str, ...]
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    prefix: str  # the key's first characters (``stile_<id>``), safe to display

    def active(self, now: datetime | None = None) -> bool:
        """Not revoked and not expired at `now` (default: the current time)."""
        moment = now or datetime.now(UTC)
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > moment)


class KeyStore(Protocol):
    """Narrow API-key store."""

    async def create(self, name: str, roles: Sequence[str], expires_at: datetime | None) -> tuple[str, ApiKeyRecord]:
        """Issue a key; returns the plaintext key (shown once) and its record. Raises `DuplicateKeyName`."""
        ...

    async def verify(self, presented: str) -> ApiKeyRecord | None:
        """The key's record, or None if malformed, unknown, wrong, revoked or expired."""
        ...

    async def list(self) -> builtins.list[ApiKeyRecord]:
        """Every key (revoked and expired included), oldest first."""
        ...

    async def revoke(self, name_or_id: str) -> bool:
        """Revoke the unrevoked key with this name or id; False if there is none."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...


# ---------------------------------------------------------------------------------------------- hashing


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _hash(key: str, salt: bytes) -> str:
    digest = hmac.new(salt, key.encode("utf-8"), hashlib.sha256).digest()
    return f"{HASH_SCHEME}${_b64(salt)}${_b64(digest)}"


def hash_for_config(key: str) -> str:
    """A salted hash of `key` to declare in YAML instead of the key itself (``hmac-sha256$salt$digest``)."""
    if len(key) < MIN_CONFIG_KEY_LEN:
        raise ValueError(f"refusing to hash a key shorter than {MIN_CONFIG_KEY_LEN} characters (too guessable)")
    return _hash(key, secrets.token_bytes(16))


def verify_against_hash(presented: str, stored_hash: str) -> bool:
    """True if `presented` matches a hash from `hash_for_config` (constant-time compare); False if malformed."""
    scheme, _, rest = stored_hash.partition("$")
    salt_text, _, digest_text = rest.partition("$")
    if scheme != HASH_SCHEME or not salt_text or not digest_text:
        return False
    try:
        salt, expected = _unb64(salt_text), _unb64(digest_text)
    except ValueError:
        return False
    actual = hmac.new(salt, presented.encode("utf-8"), hashlib.sha256).digest()
    return hmac.compare_digest(actual, expected)


def split_key(presented: str) -> tuple[str, str] | None:
    """``(id, secret)`` of a well-formed ``stile_<id>_<secret>`` key, else None."""
    if not presented.startswith(KEY_PREFIX):
        return None
    key_id, sep, secret = presented[len(KEY_PREFIX):].partition("_")
    if not sep or not _ID_RE.fullmatch(key_id) or not _SECRET_RE.fullmatch(secret):
        return None
    return key_id, secret


# ---------------------------------------------------------------------------------------------- storage


class _UtcDateTime(sa.types.TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite has no time zones: stored naive, read back as UTC)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("datetimes given to the key store must be timezone-aware")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _table(name: str) -> sa.Table:
    if not _TABLE_RE.fullmatch(name):
        raise ValueError(f"invalid table name {name!r}")
    table = sa.Table(
        name,
        sa.MetaData(),
        sa.Column("id", sa.String(16), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("roles", sa.Text, nullable=False),  # JSON array of strings
        sa.Column("key_hash", sa.String(200), nullable=False),
        sa.Column("prefix", sa.String(40), nullable=False),
        sa.Column("created_at", _UtcDateTime, nullable=False),
        sa.Column("expires_at", _UtcDateTime, nullable=True),
        sa.Column("revoked_at", _UtcDateTime, nullable=True),
    )
    active = table.c.revoked_at.is_(None)
    sa.Index(f"{name}_active_name", table.c.name, unique=True, sqlite_where=active, postgresql_where=active)
    return table


def async_url(url: str) -> str:
    """Map ``sqlite:///x.db`` / ``postgresql://...`` onto their async drivers (aiosqlite / asyncpg)."""
    parsed = make_url(url)
    backend, _, driver = parsed.drivername.partition("+")
    if backend == "postgres":
        backend = "postgresql"
    if backend == "sqlite":
        if not parsed.database or parsed.database == ":memory:":
            raise ValueError("the key store needs a SQLite file (sqlite:///path.db), not an in-memory database")
        driver = driver or "aiosqlite"
    elif backend == "postgresql":
        driver = driver or "asyncpg"
    else:
        raise ValueError(f"unsupported key store URL scheme {parsed.drivername!r} (use sqlite:/// or postgresql://)")
    return parsed.set(drivername=f"{backend}+{driver}").render_as_string(hide_password=False)


def _record(row: Any) -> ApiKeyRecord:
    return ApiKeyRecord(
        id=row.id,
        name=row.name,
        roles=tuple(json.loads(row.roles)),
        created_at=row.created_at,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
        prefix=row.prefix,
    )


class SqlKeyStore:
    """`KeyStore` on SQLAlchemy 2 async (SQLite or PostgreSQL)."""

    def __init__(
        self,
        url: str,
        *,
        table: str = DEFAULT_TABLE,
        cache_ttl: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._engine: AsyncEngine = create_async_engine(async_url(url))
        self._table = _table(table)
        self._ready = False
        self._lock = asyncio.Lock()
        self._cache_ttl = cache_ttl
        self._clock = clock
        self._cache: dict[str, tuple[str, ApiKeyRecord, float]] = {}  # id -> (key_hash, record, cached at)

    async def _ensure(self) -> None:
        if self._ready:
            return
        async with self._lock:
            if not self._ready:
                await ensure_tables(self._engine, self._table.metadata)
                self._ready = True

    async def create(self, name: str, roles: Sequence[str], expires_at: datetime | None) -> tuple[str, ApiKeyRecord]:
        if not name.strip():
            raise KeyStoreError("a key needs a non-empty name")
        if isinstance(roles, str):
            raise TypeError("roles must be a sequence of role names, not a string")
        await self._ensure()
        key_id = secrets.token_hex(8)
        key = f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
        record = ApiKeyRecord(
            id=key_id,
            name=name,
            roles=tuple(roles),
            created_at=datetime.now(UTC),
            expires_at=expires_at,
            revoked_at=None,
            prefix=f"{KEY_PREFIX}{key_id}",
        )
        values = {
            "id": record.id,
            "name": record.name,
            "roles": json.dumps(list(record.roles)),
            "key_hash": _hash(key, secrets.token_bytes(16)),
            "prefix": record.prefix,
            "created_at": record.created_at,
            "expires_at": record.expires_at,
            "revoked_at": None,
        }
        try:
            async with self._engine.begin() as conn:
                await conn.execute(self._table.insert().values(**values))
        except IntegrityError as exc:
            raise DuplicateKeyName(f"a key named {name!r} already exists (revoke it first)") from exc
        return key, record

    async def verify(self, presented: str) -> ApiKeyRecord | None:
        parts = split_key(presented)
        if parts is None:
            return None
        key_id = parts[0]
        now = datetime.now(UTC)
        cached = self._cache.get(key_id)
        if cached is not None:
            key_hash, record, at = cached
            if self._clock() - at < self._cache_ttl:
                if verify_against_hash(presented, key_hash) and record.active(now):
                    return record
                return None
            self._cache.pop(key_id, None)
        await self._ensure()
        async with self._engine.connect() as conn:
            row = (await conn.execute(sa.select(self._table).where(self._table.c.id == key_id))).first()
        if row is None or not verify_against_hash(presented, row.key_hash):
            return None
        record = _record(row)
        if not record.active(now):
            return None
        if self._cache_ttl > 0:
            self._cache[key_id] = (row.key_hash, record, self._clock())
        return record

    async def list(self) -> builtins.list[ApiKeyRecord]:
        await self._ensure()
        t = self._table
        async with self._engine.connect() as conn:
            rows = (await conn.execute(sa.select(t).order_by(t.c.created_at, t.c.id))).all()
        return [_record(row) for row in rows]

    async def revoke(self, name_or_id: str) -> bool:
        await self._ensure()
        t = self._table
        stmt = (
            sa.update(t)
            .where(sa.or_(t.c.id == name_or_id, t.c.name == name_or_id), t.c.revoked_at.is_(None))
            .values(revoked_at=datetime.now(UTC))
            .returning(t.c.id)
        )
        async with self._engine.begin() as conn:
            ids = (await conn.execute(stmt)).scalars().all()
        for key_id in ids:
            self._cache.pop(key_id, None)
        return bool(ids)

    async def aclose(self) -> None:
        self._cache.clear()
        await self._engine.dispose()


def open_key_store(
    url: str, *, table: str = DEFAULT_TABLE, cache_ttl: float = 0.0, clock: Callable[[], float] = time.monotonic
) -> KeyStore:
    """The key store at `url` (``sqlite:///path.db`` or ``postgresql://user@host/db``)."""
    return SqlKeyStore(url, table=table, cache_ttl=cache_ttl, clock=clock)


def sqlite_wal(dbapi_connection: Any, _record: Any) -> None:
    """SQLite in write-ahead-log mode (a `connect` listener): readers (`stile audit tail -f`, searches, the admin
    API, other processes) never make a writer fail with "database is locked". `synchronous` stays FULL."""
    cursor = dbapi_connection.cursor()
    try:
        for attempt in range(40):  # switching the journal mode needs a moment alone with the file: processes
            try:               # or engines opening a fresh database together get "database is locked"
                cursor.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or attempt == 39:
                    raise
                time.sleep(0.05)  # blocks: only while connecting to a database being created
    finally:
        cursor.close()
