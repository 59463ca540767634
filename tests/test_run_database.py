"""Each test run has a PostgreSQL database of its own (tests/conftest.py), so concurrent runs never collide."""

from __future__ import annotations

import asyncio
import os

import asyncpg
from sqlalchemy.engine import make_url

from tests import pg


def test_the_run_uses_its_own_database_and_it_exists() -> None:
    url = os.environ[pg.ENV]
    name = make_url(url).database
    assert name is not None and name.startswith("stile_test_"), url

    async def current() -> str:
        conn = await asyncpg.connect(url, timeout=5)
        try:
            return str(await conn.fetchval("SELECT current_database()"))
        finally:
            await conn.close()

    assert asyncio.run(current()) == name


def test_a_second_run_gets_another_database_and_dropping_it_removes_it() -> None:
    server = pg.server_url()
    other = pg.create_run_database(make_url(server).set(database="postgres").render_as_string(hide_password=False))
    try:
        assert other != os.environ[pg.ENV]
    finally:
        pg.drop_run_database(make_url(other).set(database="postgres").render_as_string(hide_password=False), other)

    async def exists() -> bool:
        conn = await asyncpg.connect(server, timeout=5)
        try:
            return bool(await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", make_url(other).database))
        finally:
            await conn.close()

    assert not asyncio.run(exists())
