"""The audit query layer over each source: a JSONL file, a SQLite state store and a real PostgreSQL.

Events are sealed with the real chain and stored the way the sinks store them (one JSON line each, or one
row of `stile_audit_events` with its indexed columns). Numbers are small enough to check by hand.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from stile.observe.audit_chain import Chain
from stile.observe.audit_query import (
    Filter,
    QueryError,
    Source,
    UsageRow,
    event_ts,
    parse_since,
    percentile,
    search,
    tail,
    usage,
)
from stile.observe.audit_schema import audit_events, metadata
from stile.stores.keys import async_url

PG_URL = os.environ.get("STILE_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
T0 = datetime(2026, 11, 24, 17, 0, tzinfo=UTC)

# (minute, agent, user, tool, upstream, outcome, latency_ms, cost, virtual_server)
ROWS: list[tuple[int, str | None, str | None, str | None, str | None, str, float, float, str]] = [
    (0, "ci-bot", "alice", "notes__add_note", "notes", "ok", 10.0, 1.0, "v"),
    (1, "ci-bot", "alice", "notes__get_note", "notes", "ok", 20.0, 0.5, "v"),
    (2, "ci-bot", "bob", "notes__add_note", "notes", "is_error", 30.0, 1.0, "v"),
    (3, "helper", "bob", "files__read", "files", "ok", 40.0, 2.0, "w"),
    (4, "helper", None, "notes__add_note", "notes", "denied", 50.0, 0.0, "v"),
    (5, None, None, None, None, "unauthenticated", 0.0, 0.0, "v"),
    (6, "ci-bot", "alice", "files__read", "files", "error", 60.0, 2.0, "w"),
]


def make_events(rows: list[tuple[Any, ...]] = ROWS, start: datetime = T0, chain: Chain | None = None,
                first_id: int = 1) -> list[dict[str, Any]]:
    raw = []
    for i, (minute, agent, user, tool, upstream, outcome, latency, cost, vs) in enumerate(rows, first_id):
        raw.append({
            "id": f"boot-{i}", "time": (start + timedelta(minutes=minute)).isoformat(timespec="microseconds"),
            "request_id": i, "trace_id": None, "virtual_server": vs,
            "method": "tools/call" if tool else "tools/list", "era": "modern",
            "principal": {"agent": agent, "user": user, "roles": [], "auth": "api_key" if agent else "none"},
            "tool": tool, "arguments": None, "upstream": upstream,
            "upstream_name": tool.split("__", 1)[-1] if tool else None, "outcome": outcome,
            "error_code": None, "error_type": None, "reason": None, "latency_ms": latency, "upstream_ms": 0.5,
            "bytes_out": 0, "cache_hit": False, "cost": cost,
        })
    return (chain or Chain()).seal(raw)


def row_for(event: dict[str, Any], chain: str = "default") -> dict[str, Any]:
    return {"chain": chain, "seq": event["seq"], "id": event["id"], "ts": event_ts(event),
            "agent": event["principal"]["agent"], "principal_user": event["principal"]["user"],
            "virtual_server": event["virtual_server"], "method": event["method"], "tool": event["tool"],
            "upstream": event["upstream"], "outcome": event["outcome"], "latency_ms": event["latency_ms"],
            "upstream_ms": event["upstream_ms"], "cost": event["cost"], "event": json.dumps(event),
            "hash": event["hash"]}


@dataclass
class Backend:
    kind: str
    source: Source
    url: str | None = None
    path: Path | None = None

    async def add(self, events: list[dict[str, Any]]) -> None:
        if self.path is not None:
            with self.path.open("a") as f:
                f.writelines(json.dumps(e) + "\n" for e in events)
            return
        assert self.url is not None
        await insert_rows(self.url, events)


async def insert_rows(url: str, events: list[dict[str, Any]], chain: str = "default") -> None:
    engine = create_async_engine(async_url(url))
    try:
        async with engine.begin() as conn:
            await conn.run_sync(metadata.create_all)
            if events:
                await conn.execute(sa.insert(audit_events), [row_for(e, chain) for e in events])
    finally:
        await engine.dispose()


async def _admin(sql: str) -> None:
    engine = create_async_engine(async_url(PG_URL), isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.execute(sa.text(sql))
    finally:
        await engine.dispose()


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    """A database of its own (other suites use the audit table in `test` concurrently)."""
    name = f"stile_aq_{secrets.token_hex(6)}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(params=["jsonl", "sqlite", "postgres"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path, pg_url: str) -> AsyncIterator[Backend]:
    if request.param == "jsonl":
        path = tmp_path / "audit.jsonl"
        path.touch()
        yield Backend("jsonl", path, path=path)
        return
    url = f"sqlite:///{tmp_path / 'state.db'}" if request.param == "sqlite" else pg_url
    await insert_rows(url, [])
    yield Backend(request.param, url, url=url)
    if request.param == "postgres":
        engine = create_async_engine(async_url(url))
        try:
            async with engine.begin() as conn:
                await conn.run_sync(metadata.drop_all)
        finally:
            await engine.dispose()


@pytest.fixture
async def filled(backend: Backend) -> Backend:
    await backend.add(make_events())
    return backend


def ids(events: list[dict[str, Any]]) -> list[int]:
    return [int(e["id"].split("-")[1]) for e in events]


async def test_search_returns_the_newest_matches_oldest_first(filled: Backend) -> None:
    everything = await search(filled.source, Filter(limit=None))
    assert ids(everything) == [1, 2, 3, 4, 5, 6, 7]
    assert everything[0] == make_events()[0]  # the sealed event, unchanged
    assert ids(await search(filled.source, Filter(limit=3))) == [5, 6, 7]


@pytest.mark.parametrize(("flt", "expected"), [
    (Filter(agent="ci-bot"), [1, 2, 3, 7]),
    (Filter(user="bob"), [3, 4]),
    (Filter(tool="notes__add_note"), [1, 3, 5]),
    (Filter(tool="notes__*"), [1, 2, 3, 5]),
    (Filter(tool="files__rea?"), [4, 7]),
    (Filter(tool="NOTES__*"), []),  # case-sensitive everywhere
    (Filter(tool="notes_%"), []),  # SQL wildcards are literal
    (Filter(tool="notes.add_note"), [1, 3, 5]),  # upstream.tool, as config and `policy test` write it
    (Filter(tool="notes.*"), [1, 2, 3, 5]),
    (Filter(tool="*.read"), [4, 7]),
    (Filter(tool="files.rea?"), [4, 7]),
    (Filter(tool="notes.add%"), []),
    (Filter(tool="Notes.*"), []),
    (Filter(upstream="files"), [4, 7]),
    (Filter(outcome="ok"), [1, 2, 4]),
    (Filter(outcome="denied,unauthenticated"), [5, 6]),
    (Filter(virtual_server="w"), [4, 7]),
    (Filter(agent="ci-bot", outcome="ok", user="alice"), [1, 2]),
    (Filter(agent="nobody"), []),
])
async def test_filters(filled: Backend, flt: Filter, expected: list[int]) -> None:
    assert ids(await search(filled.source, flt)) == expected


async def test_since_is_inclusive_and_until_exclusive(filled: Backend) -> None:
    at = T0 + timedelta(minutes=2)
    assert ids(await search(filled.source, Filter(since=at))) == [3, 4, 5, 6, 7]
    assert ids(await search(filled.source, Filter(until=at))) == [1, 2]
    assert ids(await search(filled.source, Filter(since=at.timestamp(), until=at.timestamp() + 120))) == [3, 4]
    naive = at.replace(tzinfo=None)  # naive datetimes are UTC
    assert ids(await search(filled.source, Filter(since=naive, agent="helper"))) == [4, 5]


async def test_usage_by_agent(filled: Backend) -> None:
    rows = await usage(filled.source, "agent")
    assert rows == [
        UsageRow("ci-bot", calls=4, errors=2, p50_ms=20.0, p95_ms=60.0, cost=4.5),
        UsageRow("helper", calls=2, errors=1, p50_ms=40.0, p95_ms=50.0, cost=2.0),
        UsageRow(None, calls=1, errors=1, p50_ms=0.0, p95_ms=0.0, cost=0.0),
    ]


async def test_usage_by_tool_user_and_upstream_within_a_range(filled: Backend) -> None:
    by_tool = {r.key: r for r in await usage(filled.source, "tool")}
    assert by_tool["notes__add_note"] == UsageRow("notes__add_note", 3, 2, 30.0, 50.0, 2.0)
    assert by_tool["files__read"] == UsageRow("files__read", 2, 1, 40.0, 60.0, 4.0)
    by_user = await usage(filled.source, "user", since=T0 + timedelta(minutes=1), until=T0 + timedelta(minutes=6))
    assert [(r.key, r.calls, r.errors, r.cost) for r in by_user] == [
        ("bob", 2, 1, 3.0), (None, 2, 2, 0.0), ("alice", 1, 0, 0.5)]  # most calls first; ties: named first
    by_upstream = await usage(filled.source, "upstream", since=T0 + timedelta(hours=1))
    assert by_upstream == []


async def test_tail_without_follow_is_the_last_n(filled: Backend) -> None:
    got = [e async for e in tail(filled.source, Filter(limit=2, agent="ci-bot"))]
    assert ids(got) == [3, 7]


async def test_tail_follow_yields_new_events_as_they_arrive(backend: Backend) -> None:
    chain = Chain()
    now = datetime.now(UTC)
    await backend.add(make_events(ROWS[:3], start=now - timedelta(minutes=5), chain=chain))
    it = tail(backend.source, Filter(limit=1, agent="ci-bot"), follow=True, interval=0.01).__aiter__()
    try:
        assert ids([await asyncio.wait_for(anext(it), 10)]) == [3]
        more = make_events(ROWS[3:], start=now - timedelta(minutes=2), chain=chain, first_id=4)
        await backend.add(more)
        assert ids([await asyncio.wait_for(anext(it), 10)]) == [7]  # 4-6 are not ci-bot's; 1-2 are not new
        late = datetime.fromisoformat(more[-1]["time"]) - timedelta(seconds=5)  # stamped before 7, written after
        await backend.add(make_events(ROWS[:1], start=late, chain=chain, first_id=8))
        assert ids([await asyncio.wait_for(anext(it), 10)]) == [8]
    finally:
        await it.aclose()


async def test_tail_follow_on_a_file_keeps_a_partial_line_for_later(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    first, second = make_events(ROWS[:2])
    path.write_text(json.dumps(first) + "\n")
    it = tail(path, Filter(), follow=True, interval=0.01).__aiter__()
    try:
        assert ids([await asyncio.wait_for(anext(it), 10)]) == [1]
        line = json.dumps(second) + "\n"
        with path.open("a") as f:
            f.write(line[:20])
            f.flush()
            waiting = asyncio.ensure_future(anext(it))
            done, _ = await asyncio.wait({waiting}, timeout=0.1)
            assert not done  # half a line is not an event yet
            f.write(line[20:])
        assert ids([await asyncio.wait_for(waiting, 10)]) == [2]
    finally:
        await it.aclose()


async def test_an_empty_store_without_the_table_has_no_events(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    engine = create_async_engine(async_url(url))
    async with engine.begin() as conn:
        await conn.execute(sa.text("CREATE TABLE unrelated (x INTEGER)"))
    await engine.dispose()
    assert await search(url, Filter()) == []
    assert await usage(url, "tool") == []


async def test_several_chains_are_merged_by_time(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    await insert_rows(url, make_events(ROWS[0::2]), chain="a")
    await insert_rows(url, make_events(ROWS[1::2], first_id=10), chain="b")
    got = await search(url, Filter(limit=None))
    assert [e["time"] for e in got] == sorted(e["time"] for e in got) and len(got) == 7


@pytest.mark.parametrize(("source", "message"), [
    ("mysql://h/db", "bad audit source"),
    ("sqlite:///{tmp}/missing.db", "no state database"),
    ("postgresql://postgres@127.0.0.1:1/test", "cannot query audit store postgresql://postgres@127.0.0.1:1/test"),
    ("postgresql://postgres:sekrit@127.0.0.1:5432/stile_no_such_db", "cannot query audit store"),
])
async def test_unusable_stores_raise_query_error(tmp_path: Path, source: str, message: str) -> None:
    with pytest.raises(QueryError, match=message) as info:
        await search(source.format(tmp=tmp_path), Filter())
    assert "sekrit" not in str(info.value)


async def test_a_missing_file_raises_query_error(tmp_path: Path) -> None:
    with pytest.raises(QueryError, match="no audit file"):
        await search(tmp_path / "nope.jsonl", Filter())
    with pytest.raises(ValueError, match="limit"):
        await search(tmp_path / "nope.jsonl", Filter(limit=0))


async def test_a_corrupt_line_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    events = make_events(ROWS[:2])
    path.write_text(json.dumps(events[0]) + "\n{not json\n[1]\n" + json.dumps(events[1]) + "\n")
    assert ids(await search(path, Filter())) == [1, 2]


def test_parse_since() -> None:
    now = 1_800_000_000.0
    assert parse_since("24h", now) == now - 86_400
    assert parse_since("90m", now) == now - 5_400
    assert parse_since("7d", now) == now - 7 * 86_400
    assert parse_since("30s", now) == now - 30
    assert parse_since("2026-11-24T17:00:00+00:00") == T0.timestamp()
    assert parse_since("2026-11-24T17:00:00") == T0.timestamp()  # UTC without a zone
    assert parse_since("2026-11-24T18:00:00+01:00") == T0.timestamp()
    assert parse_since("1700000000") == 1_700_000_000.0
    for bad in ("yesterday", "24x", "", "-"):
        with pytest.raises(ValueError, match="bad time"):
            parse_since(bad)


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 21)]
    assert percentile(values, 50) == 10.0 and percentile(values, 95) == 19.0
    assert percentile(list(reversed(values)), 95) == 19.0
    assert percentile([5.0], 50) == 5.0 and percentile([5.0], 95) == 5.0
    assert percentile([], 50) is None
    hundred = [float(v) for v in range(1, 101)]
    assert percentile(hundred, 50) == 50.0 and percentile(hundred, 95) == 95.0
