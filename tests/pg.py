"""The PostgreSQL the store suites use: one database of its own per test run.

`tests/conftest.py` creates `stile_test_<random>` on the server named by `STILE_TEST_PG_URL` (default
`postgresql://postgres@127.0.0.1:5432/postgres`, the database used only to connect) when the session starts,
points `STILE_TEST_PG_URL` at it, and drops it at the end, so two runs on one server never share tables.
"""

from __future__ import annotations

import asyncio
import os
import secrets

import asyncpg
from sqlalchemy.engine import make_url

DEFAULT_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"  # the maintenance db every cluster has
ENV = "STILE_TEST_PG_URL"


def server_url() -> str:
    return os.environ.get(ENV, DEFAULT_SERVER)


def with_port(url: str, port: int) -> str:
    """`url` (the run's database) reached through 127.0.0.1:`port` (a forwarder in front of the server)."""
    return make_url(url).set(host="127.0.0.1", port=port).render_as_string(hide_password=False)


async def _admin(url: str, sql: str) -> None:
    conn = await asyncpg.connect(make_url(url).render_as_string(hide_password=False), timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def create_run_database(server: str) -> str:
    """Create a uniquely named database on `server`; return its URL (OSError/asyncpg errors propagate)."""
    name = f"stile_test_{secrets.token_hex(6)}"
    asyncio.run(_admin(server, f'CREATE DATABASE "{name}"'))
    return make_url(server).set(database=name).render_as_string(hide_password=False)


def drop_run_database(server: str, url: str) -> None:
    name = make_url(url).database
    assert name is not None and name.startswith("stile_test_")
    asyncio.run(_admin(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
