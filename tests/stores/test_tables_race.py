"""Stores created at the same moment by several processes (workers, replicas starting together).

Each test gets a database of its own on the real PostgreSQL, so the tables really are missing when N
independent engines (one per would-be process) race to create them; without `ensure_tables`' retry the
losers fail with a unique violation on `pg_type` or `DuplicateTable`.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from stile.stores.keys import SqlKeyStore, async_url
from stile.stores.pins import SqlPinStore
from stile.stores.revocations import SqlRevocations
from stile.stores.tables import ensure_tables
from tests.pg import create_run_database, drop_run_database, server_url

RACERS = 8


@pytest.fixture
async def fresh_pg() -> AsyncIterator[str]:
    server = server_url()
    url = await asyncio.to_thread(create_run_database, server)
    try:
        yield url
    finally:
        await asyncio.to_thread(drop_run_database, server, url)


def _metadata() -> sa.MetaData:
    meta = sa.MetaData()
    t = sa.Table("raced", meta, sa.Column("id", sa.Integer, primary_key=True), sa.Column("name", sa.String(32)))
    sa.Index("raced_name", t.c.name, unique=True)
    return meta


async def test_racing_creators_all_succeed_and_make_one_table(fresh_pg: str) -> None:
    engines = [create_async_engine(async_url(fresh_pg)) for _ in range(RACERS)]
    try:
        await asyncio.gather(*(ensure_tables(e, _metadata()) for e in engines))
        async with engines[0].connect() as conn:
            names = await conn.run_sync(lambda c: sa.inspect(c).get_table_names())
            indexes = await conn.run_sync(lambda c: sa.inspect(c).get_indexes("raced"))
        assert names == ["raced"]
        assert [i["name"] for i in indexes] == ["raced_name"]
    finally:
        for e in engines:
            await e.dispose()


async def test_a_real_failure_still_raises() -> None:
    engine = create_async_engine(async_url("postgresql://postgres@127.0.0.1:5432/no_such_db_" + secrets.token_hex(4)))
    try:
        with pytest.raises(sa.exc.DBAPIError):
            await ensure_tables(engine, _metadata())
    finally:
        await engine.dispose()


async def test_key_pin_and_revocation_stores_opened_together_on_an_empty_database(fresh_pg: str) -> None:
    keys = [SqlKeyStore(fresh_pg) for _ in range(RACERS)]
    pins = [SqlPinStore(fresh_pg) for _ in range(RACERS)]
    revs = [SqlRevocations(fresh_pg) for _ in range(RACERS)]
    try:
        await asyncio.gather(*(k.list() for k in keys), *(p.rows() for p in pins),
                             *(r.is_revoked("nonce") for r in revs))
        _, record = await keys[3].create("raced", ["reader"], None)
        assert [r.id for r in await keys[5].list()] == [record.id]
    finally:
        for s in (*keys, *pins, *revs):
            await s.aclose()
