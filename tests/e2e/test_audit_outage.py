"""No audit event is lost when the state store goes away: a real gateway, PostgreSQL behind a cuttable
TCP forwarder, an outage spanning a restart of the gateway.

Run 1 starts with the database unreachable, serves calls (events spool to disk, visible in
/metrics) and stops while it is still down. Run 2 starts with the database back, replays the spool
and serves more calls. Every call of both runs must then be in PostgreSQL, once, in order, on one
intact chain.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from mcp import Client
from prometheus_client.parser import text_string_to_metric_families

from stile.observe.audit_store import verify_store
from tests.observe.test_audit_store import PG_URL, Db
from tests.observe.test_spool import Forwarder
from tests.pg import with_port
from tests.support import notes_upstream, stile_server


@pytest.fixture
def notes() -> Iterator[str]:
    with notes_upstream() as url:
        yield url


async def _enter(cm: AbstractContextManager[str]) -> str:
    return await asyncio.to_thread(cm.__enter__)  # the forwarder runs on this loop: never block it


async def _exit(cm: AbstractContextManager[str]) -> None:
    await asyncio.to_thread(cm.__exit__, None, None, None)


async def _spooled(base: str) -> float:
    async with aiohttp.ClientSession() as http, http.get(f"{base}/metrics") as r:
        text = await r.text()
    return sum(s.value for fam in text_string_to_metric_families(text) for s in fam.samples
               if s.name == "stile_audit_spooled_events" and s.labels.get("sink", "").startswith("store"))


async def _calls(base: str, notes: list[str]) -> None:
    async with Client(f"{base}/mcp/v", mode="2026-07-28") as client:
        for title in notes:
            await client.call_tool("notes__add_note", {"title": title, "text": "x"})


async def test_an_outage_across_a_restart_loses_no_event(notes: str, tmp_path: Path) -> None:
    db = Db(PG_URL)
    fwd = Forwarder()
    await fwd.start()
    url = with_port(PG_URL, fwd.port)
    await fwd.cut()  # the database is unreachable from the start
    config: dict[str, Any] = {
        "state": url, "upstreams": {"notes": {"url": notes}}, "virtual_servers": {"v": {"auth": "none"}},
        "audit": {"chain": db.chain, "spool_dir": str(tmp_path / "spool"), "retry_seconds": 0.2},
    }
    try:
        first = stile_server(config)
        base = await _enter(first)
        try:
            await _calls(base, ["a", "b", "c"])
            deadline = time.monotonic() + 30
            while await _spooled(base) < 3:  # the writer is asynchronous: wait for it, with a deadline
                assert time.monotonic() < deadline, "events never reached the spool"
        finally:
            await _exit(first)  # stops while the database is still down: the spool stays on disk
        assert list((tmp_path / "spool").glob("store*.spool"))
        assert await db.rows() == []

        await fwd.restore()
        second = stile_server({**config, "state": with_port(PG_URL, fwd.port)})
        base = await _enter(second)
        try:
            await _calls(base, ["d", "e"])
        finally:
            await _exit(second)

        rows = await db.rows()
        calls = [orjson.loads(r.event) for r in rows if r.method == "tools/call"]
        assert [c["arguments"]["title"] for c in calls] == ["a", "b", "c", "d", "e"]
        assert [r.seq for r in rows] == list(range(1, len(rows) + 1))
        assert len({r.id for r in rows}) == len(rows)
        assert await verify_store(db.url, db.chain) == []
    finally:
        if fwd.server is not None:
            await fwd.cut()
        await db.cleanup()
