"""The KeyStore contract, run against SQLite (tmp file) and a real PostgreSQL (127.0.0.1:5432/test).

PostgreSQL is required, not optional: if it is unreachable these tests fail. Each test uses its own table
(unique name) and drops it afterwards.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from stile.stores.keys import (
    ApiKeyRecord,
    DuplicateKeyName,
    KeyStore,
    async_url,
    hash_for_config,
    open_key_store,
    split_key,
    verify_against_hash,
)

PG_URL = os.environ.get("STILE_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")


class Backend:
    def __init__(self, url: str, table: str) -> None:
        self.url = url
        self.table = table

    def open(self, cache_ttl: float = 0.0, clock: Callable[[], float] = time.monotonic) -> KeyStore:
        return open_key_store(self.url, table=self.table, cache_ttl=cache_ttl, clock=clock)

    async def dump(self) -> str:
        """Every cell of every row of the key table, as one string."""
        engine = create_async_engine(async_url(self.url))
        try:
            async with engine.connect() as conn:
                rows = (await conn.execute(sa.text(f'SELECT * FROM "{self.table}"'))).all()
        finally:
            await engine.dispose()
        assert rows, "expected rows in the key table"
        return "\n".join(" | ".join(str(cell) for cell in row) for row in rows)

    async def drop(self) -> None:
        engine = create_async_engine(async_url(self.url))
        try:
            async with engine.begin() as conn:
                await conn.execute(sa.text(f'DROP TABLE IF EXISTS "{self.table}"'))
        finally:
            await engine.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    table = f"stile_test_keys_{secrets.token_hex(6)}"
    if request.param == "sqlite":
        yield Backend(f"sqlite:///{tmp_path / 'state.db'}", table)
        return
    b = Backend(PG_URL, table)
    try:
        yield b
    finally:
        await b.drop()


@pytest.fixture
async def store(backend: Backend) -> AsyncIterator[KeyStore]:
    s = backend.open()
    try:
        yield s
    finally:
        await s.aclose()


def _tamper(key: str) -> str:
    last = key[-1]
    return key[:-1] + ("A" if last != "A" else "B")


async def test_create_returns_a_key_that_verifies(store: KeyStore) -> None:
    before = datetime.now(UTC)
    key, record = await store.create("ci", ["reader", "writer"], None)
    parts = split_key(key)
    assert parts is not None and parts[0] == record.id
    assert key.startswith(f"stile_{record.id}_")
    assert record.prefix == f"stile_{record.id}" and key.startswith(record.prefix)
    assert record.name == "ci" and record.roles == ("reader", "writer")
    assert record.expires_at is None and record.revoked_at is None
    assert record.created_at.tzinfo is not None and record.created_at >= before - timedelta(seconds=1)
    verified = await store.verify(key)
    assert verified is not None
    assert verified == record


async def test_keys_are_distinct(store: KeyStore) -> None:
    key_a, rec_a = await store.create("a", [], None)
    key_b, rec_b = await store.create("b", [], None)
    assert key_a != key_b and rec_a.id != rec_b.id
    assert (await store.verify(key_a)) == rec_a
    assert (await store.verify(key_b)) == rec_b


async def test_wrong_unknown_and_malformed_keys_do_not_verify(store: KeyStore) -> None:
    key, record = await store.create("ci", ["reader"], None)
    _, secret = split_key(key) or ("", "")
    other_key, _ = await store.create("other", ["reader"], None)
    _, other_secret = split_key(other_key) or ("", "")
    unknown_id = "0" * 16 if record.id != "0" * 16 else "1" * 16
    bad = [
        _tamper(key),  # wrong secret
        f"stile_{record.id}_{other_secret}",  # another key's secret under this id
        f"stile_{unknown_id}_{secret}",  # unknown id
        "",
        "stile_",
        "stile__",
        f"stile_{record.id}",
        f"stile_{record.id}_",
        key + "x",
        key[:-1],
        key.upper(),
        f"sk_{record.id}_{secret}",
        secret,
        record.prefix,
        f"stile_{record.id}_{secret} ",
        f"stile_{record.id}' OR '1'='1_{secret}",
    ]
    for presented in bad:
        assert await store.verify(presented) is None, presented
    assert await store.verify(key) is not None


async def test_revoke_takes_effect_immediately(store: KeyStore) -> None:
    key, record = await store.create("ci", ["reader"], None)
    assert await store.verify(key) is not None
    assert await store.revoke("ci") is True
    assert await store.verify(key) is None
    assert await store.revoke("ci") is False  # nothing active left under that name
    [listed] = await store.list()
    assert listed.id == record.id and listed.revoked_at is not None


async def test_revoke_by_id_and_unknown(store: KeyStore) -> None:
    key, record = await store.create("ci", [], None)
    keep, _ = await store.create("keep", [], None)
    assert await store.revoke("nope") is False
    assert await store.revoke(record.id) is True
    assert await store.verify(key) is None
    assert await store.verify(keep) is not None


async def test_revoke_is_seen_by_another_store_instance(backend: Backend, store: KeyStore) -> None:
    key, _ = await store.create("ci", [], None)
    other = backend.open()
    try:
        assert await other.verify(key) is not None
        assert await store.revoke("ci") is True
        assert await other.verify(key) is None
    finally:
        await other.aclose()


async def test_expired_key_does_not_verify(store: KeyStore) -> None:
    past = datetime.now(UTC) - timedelta(seconds=1)
    key, record = await store.create("old", [], past)
    assert record.expires_at == past
    assert await store.verify(key) is None
    future = datetime.now(UTC) + timedelta(days=1)
    live_key, live = await store.create("new", [], future)
    verified = await store.verify(live_key)
    assert verified is not None and verified.expires_at == live.expires_at
    # expiry round-trips as an aware UTC datetime, equal to what was given (microsecond precision)
    listed = {r.name: r for r in await store.list()}
    assert listed["old"].expires_at == past and listed["new"].expires_at == future


async def test_expiry_in_another_timezone_round_trips(store: KeyStore) -> None:
    when = (datetime.now(UTC) + timedelta(hours=5)).astimezone(timezone(timedelta(hours=5, minutes=30)))
    key, _ = await store.create("tz", [], when)
    verified = await store.verify(key)
    assert verified is not None and verified.expires_at == when


async def test_list_shows_records_without_secrets(store: KeyStore) -> None:
    assert await store.list() == []
    key_a, rec_a = await store.create("a", ["reader"], None)
    key_b, rec_b = await store.create("b", ["writer", "admin"], datetime.now(UTC) + timedelta(days=30))
    listed = await store.list()
    assert [r.name for r in listed] == ["a", "b"]
    assert listed == [rec_a, rec_b]
    for record in listed:
        assert isinstance(record, ApiKeyRecord)
        text = repr(record)
        for key in (key_a, key_b):
            assert key not in text
            assert split_key(key) is not None
            assert (split_key(key) or ("", ""))[1] not in text


async def test_duplicate_name_is_a_clear_error(store: KeyStore) -> None:
    key, _ = await store.create("ci", ["reader"], None)
    with pytest.raises(DuplicateKeyName, match="'ci' already exists"):
        await store.create("ci", ["writer"], None)
    assert [r.name for r in await store.list()] == ["ci"]
    assert await store.verify(key) is not None


async def test_revoked_name_can_be_reused(store: KeyStore) -> None:
    old, _ = await store.create("ci", [], None)
    assert await store.revoke("ci")
    new, rec = await store.create("ci", ["writer"], None)
    assert await store.verify(old) is None
    assert await store.verify(new) == rec
    assert await store.revoke("ci") is True
    assert await store.verify(new) is None
    assert len(await store.list()) == 2


async def test_plaintext_secret_never_in_database(backend: Backend, store: KeyStore) -> None:
    keys = [(await store.create(f"k{i}", ["reader"], None))[0] for i in range(3)]
    await store.verify(keys[0])
    await store.revoke("k1")
    dump = await backend.dump()
    for key in keys:
        key_id, secret = split_key(key) or ("", "")
        assert key_id in dump  # sanity: the dump really holds the rows
        assert secret not in dump
        assert key not in dump
        assert secret[:16] not in dump


async def test_concurrent_creates_with_one_name_yield_one_key(store: KeyStore) -> None:
    results = await asyncio.gather(*(store.create("race", [], None) for _ in range(5)), return_exceptions=True)
    winners = [r for r in results if isinstance(r, tuple)]
    losers = [r for r in results if isinstance(r, BaseException)]
    assert len(winners) == 1
    assert all(isinstance(r, DuplicateKeyName) for r in losers)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_verify_cache_revoked_locally_at_once_remotely_within_ttl(backend: Backend) -> None:
    fake = FakeClock()
    cached = backend.open(cache_ttl=30.0, clock=fake)
    other = backend.open()
    try:
        key, _ = await cached.create("a", [], None)
        key2, _ = await cached.create("b", [], None)
        assert await cached.verify(key) is not None
        assert await cached.verify(_tamper(key)) is None  # cache hit still checks the secret
        assert await cached.revoke("a") is True  # local revoke drops the cache entry
        assert await cached.verify(key) is None
        assert await cached.verify(key2) is not None
        assert await other.revoke("b") is True  # another process revokes
        assert await cached.verify(key2) is not None  # still cached, documented staleness
        fake.now += 31.0
        assert await cached.verify(key2) is None
    finally:
        await cached.aclose()
        await other.aclose()


def test_hash_for_config_round_trip() -> None:
    key = "stile_0123456789abcdef_" + secrets.token_urlsafe(32)
    stored = hash_for_config(key)
    assert stored.startswith("hmac-sha256$")
    assert key not in stored and key.split("_")[-1] not in stored
    assert hash_for_config(key) != stored  # per-hash random salt
    assert verify_against_hash(key, stored)
    assert not verify_against_hash(_tamper(key), stored)
    assert not verify_against_hash("", stored)
    for broken in ["", "hmac-sha256", "hmac-sha256$$", "sha256$abc$def", "hmac-sha256$!!$??", stored + "x"]:
        assert not verify_against_hash(key, broken), broken
    with pytest.raises(ValueError, match="shorter than 32"):
        hash_for_config("short-password")


def test_async_url_mapping() -> None:
    assert async_url("sqlite:///stile.db") == "sqlite+aiosqlite:///stile.db"
    assert async_url("sqlite:////abs/state.db") == "sqlite+aiosqlite:////abs/state.db"
    assert async_url("postgresql://u:p@h:5432/db") == "postgresql+asyncpg://u:p@h:5432/db"
    assert async_url("postgres://u@h/db") == "postgresql+asyncpg://u@h/db"
    assert async_url("postgresql+asyncpg://u@h/db") == "postgresql+asyncpg://u@h/db"
    for bad in ["mysql://u@h/db", "sqlite://", "sqlite:///:memory:"]:
        with pytest.raises(ValueError):
            async_url(bad)
