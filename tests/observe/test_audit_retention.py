"""Retention against SQLite (a tmp file) and a real PostgreSQL (a fresh database per test: pruning acts on
every chain in the table): signed checkpoints, export, usage rollups, and the attacks on them."""

from __future__ import annotations

import asyncio
import gzip
import os
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from stile.observe.audit_chain import GENESIS, verify_events
from stile.observe.audit_checkpoint import CheckpointKeys, kid_for, load_keys
from stile.observe.audit_query import usage
from stile.observe.audit_retention import Limits, prune
from stile.observe.audit_schema import CHECKPOINTS, ROLLUP, TABLE, audit_events
from stile.observe.audit_store import StoreSink, sealed_text, verify_store
from stile.stores.keys import async_url
from tests import pg
from tests.observe.test_audit_store import make_events


def keys() -> CheckpointKeys:
    key = secrets.token_bytes(32)
    kid = kid_for("file", key)
    return CheckpointKeys({kid: key}, kid)


class Store:
    def __init__(self, url: str) -> None:
        self.url = url

    async def sql(self, text: str, **params: Any) -> list[Any]:
        engine = create_async_engine(async_url(self.url))
        try:
            async with engine.begin() as conn:
                result = await conn.execute(sa.text(text), params)
                return list(result.all()) if result.returns_rows else []
        finally:
            await engine.dispose()

    async def write(self, chain: str, batches: list[list[dict[str, Any]]]) -> None:
        sink = StoreSink(self.url, chain)
        await sink.start()
        try:
            for batch in batches:
                await sink.write(batch)
        finally:
            await sink.aclose()

    async def seqs(self, chain: str) -> list[int]:
        return [r.seq for r in await self.sql(f"SELECT seq FROM {TABLE} WHERE chain = :c ORDER BY seq", c=chain)]

    async def count(self) -> int:
        return int((await self.sql(f"SELECT COUNT(*) AS n FROM {TABLE}"))[0].n)


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    if request.param == "sqlite":
        yield Store(f"sqlite:///{tmp_path / 'state.db'}")
        return
    run = os.environ[pg.ENV]
    url = await asyncio.to_thread(pg.create_run_database, run)
    try:
        yield Store(url)
    finally:
        await asyncio.to_thread(pg.drop_run_database, run, url)


_CLOCK = [time.time() - 30 * 86400]


def events(n: int) -> list[dict[str, Any]]:
    """`n` events a second apart, each call's later than the last call's (as a writer produces them)."""
    out = stamped(n, _CLOCK[0], 1.0)
    _CLOCK[0] += n
    return out


def stamped(n: int, start_ts: float, step: float = 60.0) -> list[dict[str, Any]]:
    """`n` events one `step` apart from `start_ts` (their `time` is what max_age and the rollup hours use)."""
    from datetime import UTC, datetime

    out = make_events(n)
    for i, event in enumerate(out):
        event["time"] = datetime.fromtimestamp(start_ts + i * step, UTC).isoformat()
    return out


async def test_prune_by_count_keeps_every_chain_verifiable_and_usage_unchanged(store: Store) -> None:
    for chain in ("a", "b", "c"):
        await store.write(chain, [events(40), events(40)])
    before = {by: await usage(store.url, by) for by in ("agent", "tool")}
    k = keys()
    report = await prune(store.url, Limits(max_events=60, batch=25), k)
    # the newest 60 are all in c (written last); a and b keep their newest event, which writers continue from
    assert report.problems == [] and {n: c.pruned for n, c in report.chains.items()} == {"a": 79, "b": 79, "c": 20}
    assert await store.count() == 62
    assert await verify_store(store.url, None, k) == []
    for by, rows in before.items():  # calls, errors and cost survive; percentiles within a 10% bucket
        after = {r.key: r for r in await usage(store.url, by)}
        for row in rows:
            got = after[row.key]
            assert (got.calls, got.errors, got.cost) == (row.calls, row.errors, row.cost)
            assert row.p50_ms is not None and got.p50_ms is not None
            assert row.p50_ms <= got.p50_ms <= row.p50_ms * 1.1 + 0.01
    marks = {r.chain: r for r in await store.sql(f"SELECT * FROM {CHECKPOINTS}")}
    assert {n: m.seq for n, m in marks.items()} == {"a": 79, "b": 79, "c": 20}
    assert [(await store.seqs(chain))[0] for chain in "abc"] == [80, 80, 21]


async def test_writers_continue_after_their_whole_past_is_pruned(store: Store) -> None:
    sink = StoreSink(store.url, "w1")
    await sink.start()
    await sink.write(events(30))  # this sink keeps its head cached
    k = keys()
    report = await prune(store.url, Limits(max_age=1.0), k)  # every event is due: all but the newest go
    assert report.pruned == 29 and await store.seqs("w1") == [30]
    await sink.write(events(5))
    await sink.aclose()
    await store.write("w1", [events(5)])  # a new process: reads the head from what is left
    assert await store.seqs("w1") == list(range(30, 41))
    await prune(store.url, Limits(max_age=1.0), k)
    await store.sql(f"DELETE FROM {TABLE} WHERE chain = 'w1'")  # only the checkpoint (seq 39) is left
    assert any("no events after its checkpoint" in p for p in await verify_store(store.url, None, k))
    await store.write("w1", [events(2)])  # continues from the checkpoint, not from seq 1
    assert await store.seqs("w1") == [40, 41]
    assert await verify_store(store.url, None, k) == []


async def test_export_before_delete_holds_every_pruned_event_once_and_chains(store: Store, tmp_path: Path) -> None:
    await store.write("x", [events(50)])
    stored = await store.sql(f"SELECT seq, event, hash FROM {TABLE} ORDER BY seq")
    k = keys()
    report = await prune(store.url, Limits(max_events=10, batch=15, export=tmp_path / "export"), k)
    files = sorted((tmp_path / "export" / "x").glob("*.jsonl.gz"))
    assert [f.name for f in files] == ["000000000001-000000000015.jsonl.gz", "000000000016-000000000030.jsonl.gz",
                                       "000000000031-000000000040.jsonl.gz"]
    assert [Path(f).name for f in report.chains["x"].files] == [f.name for f in files]
    lines = [line for f in files for line in gzip.decompress(f.read_bytes()).splitlines()]
    assert lines == [sealed_text(r.event, r.hash).encode() for r in stored[:40]]
    assert verify_events([(str(i), orjson.loads(line)) for i, line in enumerate(lines)]) == []
    mark = (await store.sql(f"SELECT * FROM {CHECKPOINTS}"))[0]
    assert mark.export == str(files[-1]) and mark.hash == orjson.loads(lines[-1])["hash"]


async def test_max_age_prunes_only_old_events(store: Store) -> None:
    now = time.time()
    await store.write("t", [stamped(10, now - 10 * 86400), stamped(5, now - 3600)])
    k = keys()
    report = await prune(store.url, Limits(max_age=86400.0), k)
    assert report.pruned == 10 and await store.seqs("t") == list(range(11, 16))
    rolled = await store.sql(f"SELECT SUM(calls) AS n FROM {ROLLUP}")
    assert rolled[0].n == 10
    assert await prune(store.url, Limits(max_age=86400.0), k) is not None
    assert await store.count() == 5  # nothing more was due


async def test_max_size_prunes_down_to_the_size(store: Store) -> None:
    await store.write("s", [events(200)])
    report = await prune(store.url, Limits(max_size=1), keys())  # smaller than one event: all but the newest
    assert report.pruned == 199 and await store.count() == 1


async def test_a_tampered_chain_is_not_pruned(store: Store) -> None:
    await store.write("ok", [events(20)])
    await store.write("bad", [events(20)])
    row = (await store.sql(f"SELECT event FROM {TABLE} WHERE chain = 'bad' AND seq = 3"))[0]
    forged = row.event.replace('"outcome":"ok"', '"outcome":"denied"')
    await store.sql(f"UPDATE {TABLE} SET event = :e WHERE chain = 'bad' AND seq = 3", e=forged)
    report = await prune(store.url, Limits(max_events=10), keys())
    assert report.chains["ok"].pruned == 19 and report.chains["bad"].pruned == 0
    assert any("not pruned: chain bad seq 3" in p for p in report.problems)
    assert await store.seqs("bad") == list(range(1, 21))  # the evidence stays


async def test_checkpoint_attacks_are_detected(store: Store) -> None:
    await store.write("v", [events(30)])
    k = keys()
    await prune(store.url, Limits(max_events=20), k)
    first = (await store.sql(f"SELECT * FROM {CHECKPOINTS}"))[0]
    await store.write("v", [events(10)])
    await prune(store.url, Limits(max_events=20), k)
    assert await verify_store(store.url, None, k) == []

    # edit the checkpoint to hide more deleted events: the signature no longer matches
    await store.sql(f"DELETE FROM {TABLE} WHERE chain = 'v' AND seq = 21")
    await store.sql(f"UPDATE {CHECKPOINTS} SET seq = 21, hash = (SELECT hash FROM {TABLE} WHERE seq = 22)")
    problems = await verify_store(store.url, None, k)
    assert any("signature does not match" in p for p in problems)

    # a checkpoint signed with another key (a forger's)
    other = keys()
    assert other.signing is not None
    await store.sql(f"UPDATE {CHECKPOINTS} SET kid = :kid", kid=other.signing)
    assert any("which this verify cannot read" in p for p in await verify_store(store.url, None, k))

    # replaying an older, genuinely signed checkpoint
    cols = {c: getattr(first, c) for c in ("chain", "seq", "hash", "ts", "pruned", "at", "export", "kid",
                                           "signature")}
    await store.sql(f"DELETE FROM {CHECKPOINTS}")
    await store.sql(f"INSERT INTO {CHECKPOINTS} (chain, seq, hash, ts, pruned, at, export, kid, signature) "
                    "VALUES (:chain, :seq, :hash, :ts, :pruned, :at, :export, :kid, :signature)", **cols)
    problems = await verify_store(store.url, None, k)
    assert problems and not any("signature" in p for p in problems)
    assert any("seq 22 follows 10" in p for p in problems)

    # deleting the checkpoint: the chain no longer starts at the genesis
    await store.sql(f"DELETE FROM {CHECKPOINTS}")
    assert any("seq 22 follows 0" in p for p in await verify_store(store.url, None, k))


async def test_deleting_a_middle_event_after_pruning_is_detected(store: Store) -> None:
    await store.write("m", [events(30)])
    k = keys()
    await prune(store.url, Limits(max_events=20), k)
    await store.sql(f"DELETE FROM {TABLE} WHERE chain = 'm' AND seq = 20")
    problems = await verify_store(store.url, None, k)
    assert any("chain m seq 21" in p and "deleted" in p for p in problems)
    assert not any("checkpoint" in p for p in problems)


async def test_pruning_while_writing_loses_nothing(store: Store) -> None:
    k = keys()
    sink = StoreSink(store.url, "live")
    await sink.start()
    written: list[str] = []
    stop = asyncio.Event()

    async def writer() -> None:
        while not stop.is_set():
            batch = events(20)
            await sink.write(batch)
            written.extend(e["id"] for e in batch)
            await asyncio.sleep(0)

    task = asyncio.create_task(writer())
    pruned = 0
    try:
        while pruned < 200:
            pruned += (await prune(store.url, Limits(max_events=30, batch=20), k)).pruned
            assert len(written) < 100_000, "the writer never gave the pruner a chance"
    finally:
        stop.set()
        await task
        await sink.aclose()
    remaining = await store.count()
    rolled = (await store.sql(f"SELECT SUM(calls) AS n FROM {ROLLUP}"))[0].n
    assert remaining + rolled == len(written)  # each event is stored or counted in the rollup, once
    assert await verify_store(store.url, None, k) == []


async def test_concurrent_pruners_back_off_from_each_other(store: Store) -> None:
    for chain in ("p", "q"):
        await store.write(chain, [events(100)])
    k = keys()
    reports = await asyncio.gather(*(prune(store.url, Limits(max_events=20, batch=10), k) for _ in range(3)))
    assert sum(r.pruned for r in reports) == 99 + 80 and all(r.problems == [] for r in reports)
    assert await store.count() == 21  # p (older) keeps its newest event
    rolled = (await store.sql(f"SELECT SUM(calls) AS n FROM {ROLLUP}"))[0].n
    assert rolled == 99 + 80
    assert await verify_store(store.url, None, k) == []


async def test_a_store_from_before_writer_chains_and_retention_still_verifies(tmp_path: Path) -> None:
    """Only the events table, one chain `default`, as an older Stile left it: verify, usage, prune, continue."""
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = create_async_engine(async_url(url))
    async with engine.begin() as conn:
        await conn.run_sync(lambda c: audit_events.create(c))
    await engine.dispose()
    legacy = Store(url)
    await legacy.write("default", [events(25)])
    for row in await legacy.sql(f"SELECT seq, event, hash FROM {TABLE}"):  # older Stile stored the hash twice
        await legacy.sql(f"UPDATE {TABLE} SET event = :e WHERE seq = :s", e=sealed_text(row.event, row.hash),
                         s=row.seq)
    assert all('"hash":"' in r.event for r in await legacy.sql(f"SELECT event FROM {TABLE}"))
    await legacy.sql(f"DROP TABLE IF EXISTS {CHECKPOINTS}")
    await legacy.sql(f"DROP TABLE IF EXISTS {ROLLUP}")
    assert await verify_store(url) == []
    assert sum(r.calls for r in await usage(url, "tool")) == 25
    k = await load_keys(url, None, tmp_path / "spool", create=True)  # no vault: a key file in the spool dir
    assert k.signing is not None and k.signing.startswith("file:")
    assert (tmp_path / "spool" / "audit-checkpoint.key").stat().st_mode & 0o777 == 0o600
    assert (await prune(url, Limits(max_events=5, export=tmp_path / "x"), k)).pruned == 20
    from stile.observe.audit_sinks import verify_jsonl

    [export] = (tmp_path / "x" / "default").glob("*.gz")  # old rows export as they were stored
    assert verify_jsonl(export) == [] and len(gzip.decompress(export.read_bytes()).splitlines()) == 20
    await legacy.write("default", [events(3)])
    assert await legacy.seqs("default") == list(range(21, 29))
    again = await load_keys(url, None, tmp_path / "spool", create=False)
    assert await verify_store(url, None, again) == []
    assert await verify_store(url, None, CheckpointKeys()) != []  # no key: the checkpoint is not taken on trust
    assert sum(r.calls for r in await usage(url, "tool")) == 28


def test_chain_names_cannot_escape_the_export_directory(tmp_path: Path) -> None:
    from stile.observe.audit_retention import chain_dir

    for name in ("..", "../etc", "a/b", ".hidden", "x\x00y"):
        path = chain_dir(tmp_path, name)
        assert path.parent == tmp_path and not path.name.startswith(".")
    assert chain_dir(tmp_path, "replica-1") == tmp_path / "replica-1"


async def test_genesis_constant_is_what_an_unpruned_chain_starts_from(store: Store) -> None:
    await store.write("g", [events(2)])
    first = (await store.sql(f"SELECT event FROM {TABLE} WHERE seq = 1"))[0]
    assert orjson.loads(first.event)["prev"] == GENESIS


async def test_verify_reads_a_long_chain_a_page_at_a_time(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    from stile.observe import audit_store

    monkeypatch.setattr(audit_store, "VERIFY_PAGE", 7)
    await store.write("long", [events(30)])
    assert await verify_store(store.url) == []
    await store.sql(f"DELETE FROM {TABLE} WHERE chain = 'long' AND seq IN (7, 8)")  # across a page boundary
    problems = await verify_store(store.url)
    assert any("chain long seq 9" in p and "deleted" in p for p in problems)
    assert not any("seq 10" in p for p in problems)  # the chain is followed on over the boundary


async def test_an_export_file_verifies_on_its_own_and_an_edit_in_it_is_found(store: Store, tmp_path: Path) -> None:
    from stile.observe.audit_sinks import verify_jsonl

    await store.write("e", [events(30)])
    await prune(store.url, Limits(max_events=5, batch=10, export=tmp_path), keys())
    files = sorted((tmp_path / "e").glob("*.gz"))
    assert len(files) == 3 and all(verify_jsonl(f) == [] for f in files)
    lines = gzip.decompress(files[1].read_bytes()).splitlines()
    lines[4] = lines[4].replace(b'"outcome":"ok"', b'"outcome":"denied"')
    files[1].write_bytes(gzip.compress(b"\n".join(lines) + b"\n"))
    assert any("line 5" in p and "modified" in p for p in verify_jsonl(files[1]))


async def test_concurrent_pruners_with_different_batches_export_each_event_once(store: Store, tmp_path: Path) -> None:
    await store.write("z", [events(300)])
    stored = await store.sql(f"SELECT event, hash FROM {TABLE} ORDER BY seq")
    k = keys()
    runs = [prune(store.url, Limits(max_events=1, batch=b, export=tmp_path), k) for b in (17, 40, 64)]
    reports = await asyncio.gather(*runs)
    assert sum(r.pruned for r in reports) == 299 and all(r.problems == [] for r in reports)
    files = sorted((tmp_path / "z").glob("*.jsonl.gz"))
    lines = [line for f in files for line in gzip.decompress(f.read_bytes()).splitlines()]
    # every pruned event once, in order, no gaps
    assert lines == [sealed_text(r.event, r.hash).encode() for r in stored[:299]]
    assert not list((tmp_path / "z").glob(".*"))  # no temporary files left


async def test_verify_while_pruning_reports_nothing(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """A prune that commits after verify read the checkpoint and before it read the events: no false report."""
    from stile.observe import audit_store

    await store.write("u", [events(100)])
    k = keys()
    await prune(store.url, Limits(max_events=80), k)
    real, calls = audit_store.checkpoints, []

    async def then_prune(conn: Any) -> dict[str, dict[str, Any]]:
        marks = await real(conn)
        calls.append(1)
        if len(calls) == 1:
            assert (await prune(store.url, Limits(max_events=30), k)).pruned == 50  # commits in between
        return marks

    monkeypatch.setattr(audit_store, "checkpoints", then_prune)
    assert await verify_store(store.url, None, k) == []
    assert len(calls) == 2  # it noticed the checkpoint had moved and verified again from the new one
