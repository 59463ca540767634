"""The revocation store contract on SQLite (tmp file) and a real PostgreSQL (127.0.0.1:5432/test, required).

Each test uses its own table and drops it afterwards.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from stile.stores.keys import async_url
from stile.stores.revocations import MemoryRevocations, RevocationStore, SqlRevocations, open_revocation_store

PG_URL = os.environ.get("STILE_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")


class Backend:
    def __init__(self, url: str, table: str) -> None:
        self.url, self.table = url, table

    def open(self) -> SqlRevocations:
        return SqlRevocations(self.url, table=self.table)

    async def rows(self) -> list[str]:
        engine = create_async_engine(async_url(self.url))
        try:
            async with engine.connect() as conn:
                return [r[0] for r in (await conn.execute(sa.text(f'SELECT nonce FROM "{self.table}"'))).all()]
        finally:
            await engine.dispose()

    async def drop(self) -> None:
        engine = create_async_engine(async_url(self.url))
        try:
            async with engine.begin() as conn:
                await conn.execute(sa.text(f'DROP TABLE IF EXISTS "{self.table}"'))
        finally:
            await engine.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    table = f"stile_test_revoked_{secrets.token_hex(6)}"
    url = f"sqlite:///{tmp_path / 'state.db'}" if request.param == "sqlite" else PG_URL
    b = Backend(url, table)
    try:
        yield b
    finally:
        await b.drop()


@pytest.fixture
async def store(backend: Backend) -> AsyncIterator[RevocationStore]:
    s = backend.open()
    try:
        yield s
    finally:
        await s.aclose()


async def test_a_revoked_nonce_is_revoked_and_others_are_not(store: RevocationStore) -> None:
    assert not await store.is_revoked("n1")
    await store.revoke("n1", time.time() + 60)
    assert await store.is_revoked("n1")
    assert not await store.is_revoked("n2")


async def test_a_revocation_is_seen_by_another_instance_as_another_replica_or_a_restart_would(
        backend: Backend) -> None:
    first, second = backend.open(), backend.open()
    try:
        assert not await second.is_revoked("shared")
        await first.revoke("shared", time.time() + 60)
        assert await second.is_revoked("shared")
    finally:
        await first.aclose()
        await second.aclose()


async def test_revoking_twice_or_concurrently_is_not_an_error(backend: Backend) -> None:
    stores = [backend.open() for _ in range(3)]
    try:
        await asyncio.gather(*(s.revoke("twice", time.time() + 60) for s in stores))
        await stores[0].revoke("twice", time.time() + 60)
        assert await stores[1].is_revoked("twice")
        assert await backend.rows() == ["twice"]
    finally:
        for s in stores:
            await s.aclose()


async def test_expired_revocations_are_pruned_when_another_is_recorded(store: RevocationStore,
                                                                       backend: Backend) -> None:
    await store.revoke("old", time.time() - 1)
    await store.revoke("live", time.time() + 60)
    await store.revoke("new", time.time() + 60)
    assert sorted(await backend.rows()) == ["live", "new"]


async def test_without_a_state_store_revocations_are_process_local() -> None:
    store = open_revocation_store(None)
    assert isinstance(store, MemoryRevocations)
    await store.revoke("old", time.time() - 1)
    await store.revoke("n", time.time() + 60)
    assert await store.is_revoked("n") and not await store.is_revoked("other")
    assert not await store.is_revoked("old")
    await store.aclose()


async def test_revoked_among_names_exactly_the_revoked_nonces(store: RevocationStore) -> None:
    nonces = [f"n{i}" for i in range(1200)]  # more than one IN (...) chunk
    for n in ("n3", "n700", "n1199"):
        await store.revoke(n, time.time() + 60)
    assert await store.revoked_among(nonces) == {"n3", "n700", "n1199"}  # type: ignore[attr-defined]
    assert await store.revoked_among([]) == set()  # type: ignore[attr-defined]
