"""The quota counter table on SQLite and on the shared Postgres: atomic increments from concurrent writers."""

from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from stile.stores.quotas import QuotaStore

PG_URL = os.environ.get("STILE_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture(params=["sqlite", "postgres"])
def url_and_table(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    table = f"stile_quota_test_{uuid.uuid4().hex[:12]}"
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state.db'}", table
    return PG_URL, table


async def test_concurrent_adds_never_lose_counts(url_and_table: tuple[str, str]) -> None:
    url, table = url_and_table
    stores = [QuotaStore(url, table) for _ in range(3)]  # three "replicas"
    try:
        await stores[0].add({("q", "bot", "2026-12-04"): 0.0})  # creates the table before the race
        await asyncio.gather(*(s.add({("q", "bot", "2026-12-04"): 1.0, ("q", "bot", "2026-12"): 2.5})
                               for s in stores for _ in range(5)))
        current = await stores[1].current(["2026-12-04"])
        assert current == {("q", "bot", "2026-12-04"): 15.0}
        assert (await stores[2].all_rows())[("q", "bot", "2026-12")] == 37.5
    finally:
        async with stores[0].engine.begin() as conn:
            await conn.execute(sa.text(f"DROP TABLE IF EXISTS {table}"))
        for s in stores:
            await s.aclose()


def test_a_bad_table_name_is_refused() -> None:
    with pytest.raises(ValueError, match="quota table name"):
        QuotaStore("sqlite:///x.db", "bad;name")
