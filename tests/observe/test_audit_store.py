"""StoreSink and verify_store against SQLite (a tmp file) and a real PostgreSQL (127.0.0.1:5432/test).

PostgreSQL is required: if it is unreachable these tests fail. Tests share the `stile_audit_events` table
there, so each uses its own chain names and event ids and deletes its chains' rows afterwards.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from stile.observe import audit_store
from stile.observe.audit_chain import GENESIS, chain_hash
from stile.observe.audit_schema import TABLE, metadata
from stile.observe.audit_sinks import Event, SinkError
from stile.observe.audit_store import StoreSink, chain_names, sealed_text, verify_store
from stile.stores.keys import async_url
from tests.pg import with_port

PG_URL = os.environ.get("STILE_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")


def make_events(n: int, tag: str | None = None, start: int = 1) -> list[Event]:
    """`n` realistic unsealed events with ids unique to this test run."""
    tag = tag or secrets.token_hex(6)
    out: list[Event] = []
    for i in range(start, start + n):
        out.append({
            "id": f"{tag}-{i}", "time": datetime(2026, 11, 24, 17, 40, i % 60, 123456, UTC).isoformat(),
            "request_id": i, "trace_id": secrets.token_hex(16), "virtual_server": "v", "method": "tools/call",
            "era": "modern",
            "principal": {"agent": f"bot-{i % 3}", "user": "alice", "roles": ["dev"], "auth": "api_key"},
            "tool": "notes__add_note", "arguments": {"text": f"note {i}"}, "bytes_in": 80, "upstream_ms": 1.25,
            "upstream": "notes", "upstream_name": "add_note", "outcome": "ok" if i % 4 else "denied",
            "error_code": None, "error_type": None, "reason": None, "latency_ms": 1.9 + i, "bytes_out": 120,
            "cache_hit": False, "cost": 1.0,
        })
    return out


class Db:
    """One test's view of a database: a unique chain name, raw SQL for tampering, and cleanup."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.chain = f"test-{secrets.token_hex(6)}"
        self.chains = [self.chain]

    def new_chain(self) -> str:
        self.chains.append(f"test-{secrets.token_hex(6)}")
        return self.chains[-1]

    def sink(self, chain: str | None = None) -> StoreSink:
        return StoreSink(self.url, chain or self.chain)

    async def sql(self, text: str, **params: Any) -> list[Any]:
        engine = create_async_engine(async_url(self.url))
        try:
            async with engine.begin() as conn:
                result = await conn.execute(sa.text(text), params)
                return list(result.all()) if result.returns_rows else []
        finally:
            await engine.dispose()

    async def ensure_table(self) -> None:
        """Create the audit table if no sink has yet (a fresh database): reading it must not race the first write."""
        engine = create_async_engine(async_url(self.url))
        try:
            async with engine.begin() as conn:
                await conn.run_sync(metadata.create_all)
        finally:
            await engine.dispose()

    async def rows(self, chain: str | None = None) -> list[Any]:
        await self.ensure_table()
        return await self.sql(f"SELECT * FROM {TABLE} WHERE chain = :c ORDER BY seq", c=chain or self.chain)

    async def cleanup(self) -> None:
        await self.ensure_table()
        for chain in self.chains:
            await self.sql(f"DELETE FROM {TABLE} WHERE chain = :c", c=chain)


@pytest.fixture(params=["sqlite", "postgres"])
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Db]:
    if request.param == "sqlite":
        yield Db(f"sqlite:///{tmp_path / 'state.db'}")
        return
    d = Db(PG_URL)
    try:
        yield d
    finally:
        await d.cleanup()


async def write(db: Db, events: list[Event], chain: str | None = None) -> None:
    sink = db.sink(chain)
    await sink.start()
    try:
        await sink.write(events)
    finally:
        await sink.aclose()


async def test_events_stored_with_columns_and_json(db: Db) -> None:
    events = make_events(3)
    refused: Event = {"id": f"{secrets.token_hex(6)}-r", "time": "2026-11-24T17:40:09.000001+00:00",
                      "request_id": None, "trace_id": None, "virtual_server": "v", "method": None, "tool": None,
                      "principal": {"agent": None, "user": None, "roles": [], "auth": "none"},
                      "outcome": "unauthenticated", "reason": "bad key", "latency_ms": 0.0, "cost": 0.0}
    sink = db.sink()
    assert sink.name == ("store:sqlite" if db.url.startswith("sqlite") else "store:postgresql")
    await sink.start()
    await sink.start()  # idempotent: the table already exists
    await sink.write([*events, refused])
    await sink.aclose()
    rows = await db.rows()
    assert [r.seq for r in rows] == [1, 2, 3, 4]
    assert [r.id for r in rows] == [e["id"] for e in [*events, refused]]
    first = rows[0]
    assert (first.agent, first.principal_user, first.tool, first.outcome) == ("bot-1", "alice", "notes__add_note", "ok")
    assert (first.virtual_server, first.method, first.upstream) == ("v", "tools/call", "notes")
    assert first.ts == datetime.fromisoformat(events[0]["time"]).timestamp()
    assert (first.latency_ms, first.upstream_ms, first.cost) == (2.9, 1.25, 1.0)
    stored = orjson.loads(first.event)  # the hashed body; the hash is in its own column, not stored twice
    assert stored == {**events[0], "seq": 1, "prev": GENESIS}
    assert chain_hash(GENESIS, stored) == first.hash
    assert orjson.loads(sealed_text(first.event, first.hash)) == {**stored, "hash": first.hash}
    last = rows[-1]
    assert (last.agent, last.principal_user, last.tool, last.upstream, last.outcome) == (
        None, None, None, None, "unauthenticated")
    assert orjson.loads(last.event)["prev"] == rows[-2].hash
    assert await verify_store(db.url, db.chain) == []
    assert db.chain in await chain_names(db.url)
    assert "hash" not in events[0]  # the caller's events are not modified


async def test_chain_continues_across_restart(db: Db) -> None:
    first, second = make_events(3), make_events(2)
    await write(db, first)
    await write(db, second)  # a new StoreSink, as after a restart
    rows = await db.rows()
    assert [r.seq for r in rows] == [1, 2, 3, 4, 5]
    assert [r.id for r in rows] == [e["id"] for e in first + second]
    assert orjson.loads(rows[3].event)["prev"] == rows[2].hash
    assert await verify_store(db.url, db.chain) == []


async def test_chains_are_independent(db: Db) -> None:
    other = db.new_chain()
    await write(db, make_events(2))
    await write(db, make_events(3), other)
    assert [r.seq for r in await db.rows()] == [1, 2]
    assert [r.seq for r in await db.rows(other)] == [1, 2, 3]
    assert {db.chain, other} <= set(await chain_names(db.url))
    assert await verify_store(db.url, db.chain) == [] and await verify_store(db.url, other) == []


async def test_concurrent_sinks_share_one_intact_chain(db: Db) -> None:
    a, b = db.sink(), db.sink()
    await a.start()
    await b.start()
    batches = [make_events(5) for _ in range(16)]
    try:
        await asyncio.gather(*((a if i % 2 else b).write(batch) for i, batch in enumerate(batches)))
    finally:
        await a.aclose()
        await b.aclose()
    rows = await db.rows()
    assert [r.seq for r in rows] == list(range(1, 81))
    assert sorted(r.id for r in rows) == sorted(e["id"] for batch in batches for e in batch)
    for batch in batches:  # each batch stays contiguous and in order (one transaction)
        seqs = [next(r.seq for r in rows if r.id == e["id"]) for e in batch]
        assert seqs == list(range(seqs[0], seqs[0] + 5))
    assert await verify_store(db.url, db.chain) == []


async def test_conflict_reseals_onto_the_new_head(db: Db, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another replica commits between this sink's head read and its insert: the insert conflicts and re-seals."""
    mine, theirs = make_events(3), make_events(4)
    a, b = db.sink(), db.sink()
    await a.start()
    await b.start()
    real = audit_store._stored_ids
    calls: list[int] = []

    async def interleave(conn: Any, ids: list[str]) -> set[str]:
        calls.append(len(ids))
        if len(calls) == 1:  # a has read the head; b writes and commits now
            await b.write(theirs)
        return await real(conn, ids)

    monkeypatch.setattr(audit_store, "_stored_ids", interleave)
    try:
        await a.write(mine)
    finally:
        await a.aclose()
        await b.aclose()
    assert len(calls) == 3  # a's first attempt, b's write, a's second attempt
    rows = await db.rows()
    assert [r.id for r in rows] == [e["id"] for e in theirs + mine]
    assert [r.seq for r in rows] == list(range(1, 8))
    assert await verify_store(db.url, db.chain) == []


async def test_replayed_ids_are_skipped(db: Db) -> None:
    events = make_events(7)
    await write(db, events[:5])
    await write(db, events[2:])  # a replay: 3 already stored, 2 new
    await write(db, events[:3])  # nothing new
    await write(db, [events[0], *events[:1]])  # duplicates within a batch too
    rows = await db.rows()
    assert [r.id for r in rows] == [e["id"] for e in events]
    assert [r.seq for r in rows] == list(range(1, 8))
    assert await verify_store(db.url, db.chain) == []


async def seed(db: Db) -> None:
    await write(db, make_events(5))
    assert await verify_store(db.url, db.chain) == []


async def test_verify_detects_modified_event_json(db: Db) -> None:
    await seed(db)
    row = (await db.rows())[1]
    event = orjson.loads(row.event)
    event["arguments"] = {"text": "something else"}
    await db.sql(f"UPDATE {TABLE} SET event = :e WHERE chain = :c AND seq = 2", e=orjson.dumps(event).decode(),
                 c=db.chain)
    problems = await verify_store(db.url, db.chain)
    assert problems == [f"chain {db.chain} seq 2: content does not match its hash (modified)"]


async def test_verify_detects_edited_column(db: Db) -> None:
    await seed(db)
    await db.sql(f"UPDATE {TABLE} SET agent = 'someone-else' WHERE chain = :c AND seq = 3", c=db.chain)
    await db.sql(f"UPDATE {TABLE} SET cost = 0 WHERE chain = :c AND seq = 4", c=db.chain)
    problems = await verify_store(db.url, db.chain)
    assert len(problems) == 2
    assert problems[0].startswith(f"chain {db.chain} seq 3: column agent is 'someone-else'")
    assert problems[1].startswith(f"chain {db.chain} seq 4: column cost is 0.0")
    assert all(p.endswith("(modified)") for p in problems)


async def test_verify_detects_unreadable_json(db: Db) -> None:
    await seed(db)
    await db.sql(f"UPDATE {TABLE} SET event = 'not json' WHERE chain = :c AND seq = 5", c=db.chain)
    assert await verify_store(db.url, db.chain) == [f"chain {db.chain} seq 5: not a JSON event"]


async def test_verify_detects_deleted_row(db: Db) -> None:
    await seed(db)
    await db.sql(f"DELETE FROM {TABLE} WHERE chain = :c AND seq = 3", c=db.chain)
    problems = await verify_store(db.url, db.chain)
    assert problems and all(p.startswith(f"chain {db.chain} seq 4: ") for p in problems)
    assert any("deleted" in p for p in problems)


async def test_verify_detects_swapped_rows(db: Db) -> None:
    await seed(db)
    for old, new in ((2, -1), (3, 2), (-1, 3)):
        await db.sql(f"UPDATE {TABLE} SET seq = :n WHERE chain = :c AND seq = :o", n=new, o=old, c=db.chain)
    problems = await verify_store(db.url, db.chain)
    assert any(p.startswith(f"chain {db.chain} seq 2: seq 3 follows 1") for p in problems)
    assert any(p.startswith(f"chain {db.chain} seq 2: column seq is 2 but the event says 3") for p in problems)
    assert any(p.startswith(f"chain {db.chain} seq 4: does not chain") for p in problems)


async def test_verify_every_chain(tmp_path: Path) -> None:
    db = Db(f"sqlite:///{tmp_path / 'state.db'}")
    assert await verify_store(db.url) == [] and await chain_names(db.url) == []  # no table yet
    other = db.new_chain()
    await write(db, make_events(3))
    await write(db, make_events(2), other)
    assert await chain_names(db.url) == sorted([db.chain, other])
    assert await verify_store(db.url) == []
    await db.sql(f"UPDATE {TABLE} SET tool = 'x' WHERE chain = :c AND seq = 1", c=other)
    assert [p.split(":")[0] for p in await verify_store(db.url)] == [f"chain {other} seq 1"]


async def test_unreachable_database_is_a_sink_error(tmp_path: Path) -> None:
    with socket_closed_port() as port:
        sink = StoreSink(with_port(PG_URL, port))
        with pytest.raises(SinkError):
            await sink.start()
        with pytest.raises(SinkError):
            await sink.write(make_events(1))
        await sink.aclose()
    (tmp_path / "garbage.db").write_bytes(b"this is not a SQLite database" * 100)
    sink = StoreSink(f"sqlite:///{tmp_path / 'garbage.db'}")
    with pytest.raises(SinkError):
        await sink.write(make_events(1))
    await sink.aclose()


def test_chain_name_is_bounded() -> None:
    with pytest.raises(ValueError):
        StoreSink("sqlite:///x.db", chain="")
    with pytest.raises(ValueError):
        StoreSink("sqlite:///x.db", chain="c" * 65)


class socket_closed_port:
    """A localhost port with nothing listening on it (bound, then released)."""

    def __enter__(self) -> int:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port: int = s.getsockname()[1]
        return port

    def __exit__(self, *exc: object) -> None:
        return None


async def test_a_reader_holding_the_sqlite_file_does_not_block_the_writer(tmp_path: Path) -> None:
    """`stile audit tail -f` or a search reading mid-transaction must not make the gateway's writes fail."""
    import sqlite3

    url = f"sqlite:///{tmp_path / 'state.db'}"
    sink = StoreSink(url, "readers")
    await sink.start()
    try:
        await sink.write(make_events(2))
        reader = sqlite3.connect(tmp_path / "state.db", timeout=0.1)
        try:
            reader.execute("BEGIN")
            assert reader.execute(f"SELECT count(*) FROM {TABLE}").fetchone() == (2,)  # holds a read snapshot
            await sink.write(make_events(3, start=100))  # would raise SinkError ("database is locked") without WAL
        finally:
            reader.close()
    finally:
        await sink.aclose()
    assert await verify_store(url, "readers") == []
