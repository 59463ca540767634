"""The pin store contract on memory, SQLite (tmp file) and a real PostgreSQL (127.0.0.1:5432/test).

Each SQL test uses its own table and drops it afterwards.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from stile.stores.keys import async_url
from stile.stores.pins import MemoryPinStore, PinRow, PinStore, SqlPinStore, open_pin_store

PG_URL = os.environ.get("STILE_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture(params=["memory", "sqlite", "postgres"])
async def stores(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[PinStore, PinStore]]:
    """Two handles on one store (two replicas)."""
    if request.param == "memory":
        one = MemoryPinStore()
        yield one, one
        return
    table = f"stile_test_pins_{secrets.token_hex(6)}"
    url = f"sqlite:///{tmp_path / 'state.db'}" if request.param == "sqlite" else PG_URL
    a, b = SqlPinStore(url, table=table), SqlPinStore(url, table=table)
    try:
        yield a, b
    finally:
        await a.aclose()
        await b.aclose()
        engine = create_async_engine(async_url(url))
        async with engine.begin() as conn:
            await conn.execute(sa.text(f'DROP TABLE IF EXISTS "{table}"'))
        await engine.dispose()


async def test_add_keeps_the_first_writer(stores: tuple[PinStore, PinStore]) -> None:
    a, b = stores
    await a.add([PinRow("gh", "tool", "t", approved="sha256:1", approved_definition="{}")])
    await b.add([PinRow("gh", "tool", "t", approved="sha256:2"), PinRow("gh", "upstream", "", approved="seen")])
    rows = await b.rows()
    assert [(r.kind, r.name, r.approved) for r in rows] == [("tool", "t", "sha256:1"), ("upstream", "", "seen")]
    assert rows[0].updated_at > 0
    assert await a.rows("other") == []


async def test_pending_approve_revoke(stores: tuple[PinStore, PinStore]) -> None:
    a, b = stores
    await a.add([PinRow("gh", "tool", "t", approved="sha256:1", approved_definition='{"a":1}')])
    assert not await b.approve("gh", "tool", "t")  # nothing pending
    await a.set_pending("gh", "tool", "t", "sha256:2", '{"a":2}')
    await a.set_pending("gh", "prompt", "p", "sha256:3", '{"p":1}')  # creates the row, unapproved
    assert await b.approve("gh", "tool", "t")
    (t,) = [r for r in await a.rows("gh") if r.name == "t"]
    assert (t.approved, t.approved_definition, t.pending, t.pending_definition) == ("sha256:2", '{"a":2}', None, None)
    (p,) = [r for r in await a.rows("gh") if r.name == "p"]
    assert (p.approved, p.pending) == (None, "sha256:3")
    assert not await b.revoke("gh", "prompt", "p")  # nothing approved
    assert await b.revoke("gh", "tool", "t")
    (t,) = [r for r in await a.rows("gh") if r.name == "t"]
    assert (t.approved, t.pending, t.pending_definition) == (None, "sha256:2", '{"a":2}')
    await a.set_pending("gh", "tool", "t", None, None)
    await a.set_pending("gh", "tool", "absent", None, None)  # clearing nothing creates nothing
    assert {r.name for r in await a.rows()} == {"t", "p"}


def test_open_pin_store_without_a_url_is_process_local() -> None:
    assert isinstance(open_pin_store(None), MemoryPinStore)
    with pytest.raises(ValueError, match="table"):
        SqlPinStore("sqlite:///x.db", table="bad name")


async def test_thousands_of_rows_in_one_add(stores: tuple[PinStore, PinStore]) -> None:
    a, _ = stores
    await a.add([PinRow("big", "tool", f"t{i}", approved="sha256:1") for i in range(5000)])
    assert len(await a.rows("big")) == 5000
