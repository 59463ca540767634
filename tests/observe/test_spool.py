"""SpooledSink: unit tests with a fake sink, and real outages of a StoreSink on PostgreSQL behind a TCP forwarder."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, TypeVar

import orjson
import pytest

from stile.observe import spool as spool_mod
from stile.observe.audit_sinks import Event, JsonlSink, SinkError, verify_jsonl
from stile.observe.audit_store import StoreSink, verify_store
from stile.observe.spool import SpooledSink, SpoolFile
from tests.observe.test_audit_store import PG_URL, Db, make_events
from tests.pg import with_port

T = TypeVar("T")
DEADLINE = 30.0


async def within(aw: Awaitable[T], seconds: float = DEADLINE) -> T:
    return await asyncio.wait_for(aw, seconds)


class FakeSink:
    """A sink that is up or down; records what it was given; `changed` is set on every call."""

    name = "fake"

    def __init__(self, up: bool = True, start_up: bool = True) -> None:
        self.up = up
        self.start_up = start_up
        self.written: list[Event] = []
        self.writes = 0
        self.starts = 0
        self.closed = False
        self.changed = asyncio.Event()

    async def start(self) -> None:
        self.starts += 1
        self.changed.set()
        if not self.start_up:
            raise SinkError("cannot start")

    async def write(self, events: list[Event]) -> None:
        self.writes += 1
        self.changed.set()
        if not self.up:
            raise SinkError("down")
        self.written.extend(events)

    async def aclose(self) -> None:
        self.closed = True


async def until(fake: FakeSink, predicate: Any) -> None:
    """Wait (with a deadline) until `predicate()` holds, re-checking whenever the fake sink is called."""
    async def wait() -> None:
        while not predicate():
            fake.changed.clear()
            await fake.changed.wait()
    await within(wait())


def ids(events: list[Event]) -> list[str]:
    return [e["id"] for e in events]


async def test_healthy_sink_is_written_directly(tmp_path: Path) -> None:
    fake = FakeSink()
    sink = SpooledSink(fake, tmp_path / "spool" / "fake.jsonl")
    await sink.start()
    events = make_events(3)
    await sink.write(events)
    await sink.write([])
    assert fake.written == events and (sink.pending, sink.errors, sink.name) == (0, 0, "fake")
    assert not (tmp_path / "spool" / "fake.jsonl").exists()
    await within(sink.drained())
    await sink.aclose()
    assert fake.closed


async def test_outage_spools_then_replays_in_order(tmp_path: Path) -> None:
    fake = FakeSink(up=False)
    path = tmp_path / "fake.jsonl"
    sink = SpooledSink(fake, path, retry_seconds=0.01, max_retry_seconds=0.05)
    await sink.start()
    batches = [make_events(100) for _ in range(4)]
    await sink.write(batches[0])
    assert (sink.pending, sink.errors) == (100, 1)
    for batch in batches[1:]:
        await sink.write(batch)  # queued behind the spool: not tried on the sink
    assert sink.pending == 400 and path.exists()
    await until(fake, lambda: sink.errors >= 3)  # the retry loop keeps trying
    fake.up = True
    await within(sink.drained())
    assert ids(fake.written) == ids([e for b in batches for e in b])
    assert sink.pending == 0 and not path.exists() and not path.with_name("fake.jsonl.done").exists()
    after = make_events(2)
    await sink.write(after)  # straight through again
    assert ids(fake.written[-2:]) == ids(after) and not path.exists()
    await sink.aclose()


async def test_new_events_never_overtake_spooled_ones(tmp_path: Path) -> None:
    fake = FakeSink(up=False)
    sink = SpooledSink(fake, tmp_path / "s.jsonl", retry_seconds=3600, max_retry_seconds=3600)
    await sink.start()
    old, new = make_events(3), make_events(3)
    await sink.write(old)
    fake.up = True  # back, but the retry loop is still backing off
    await sink.write(new)
    assert fake.written == [] and sink.pending == 6
    await within(sink.aclose())  # stops the backoff at once, drains in order
    assert ids(fake.written) == ids(old + new) and sink.pending == 0


async def test_sink_that_fails_to_start_is_retried(tmp_path: Path) -> None:
    fake = FakeSink(start_up=False)
    sink = SpooledSink(fake, tmp_path / "s.jsonl", retry_seconds=0.01, max_retry_seconds=0.02)
    await sink.start()  # does not raise
    assert sink.errors == 1
    events = make_events(5)
    await sink.write(events)  # not started: spooled, not tried
    assert fake.writes == 0 and sink.pending == 5
    await until(fake, lambda: fake.starts >= 3)
    fake.start_up = True
    await within(sink.drained())
    assert fake.written == events
    await sink.aclose()


async def test_close_keeps_the_spool_and_a_restart_replays_it(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    down = FakeSink(up=False)
    first = SpooledSink(down, path, retry_seconds=3600)
    await first.start()
    events = make_events(600)  # more than one replay chunk
    await first.write(events[:300])
    await first.write(events[300:])
    await within(first.aclose())
    assert down.closed and path.exists() and first.pending == 600
    up = FakeSink()
    second = SpooledSink(up, path)
    await second.start()
    await within(second.drained())
    assert ids(up.written) == ids(events) and not path.exists()
    await second.aclose()


async def test_flaky_sink_keeps_order(tmp_path: Path) -> None:
    """A sink failing every other call: every event arrives exactly once, in the order written."""
    fake = FakeSink()
    real_write = fake.write

    async def flaky(events: list[Event]) -> None:
        fake.up = fake.writes % 2 == 1
        await real_write(events)

    fake.write = flaky  # type: ignore[method-assign]
    sink = SpooledSink(fake, tmp_path / "s.jsonl", retry_seconds=0.001, max_retry_seconds=0.002)
    await sink.start()
    batches = [make_events(7) for _ in range(30)]
    for batch in batches:
        await sink.write(batch)
    await within(sink.drained())
    await sink.aclose()
    assert ids(fake.written) == ids([e for b in batches for e in b]) and sink.errors > 0


async def test_close_waits_for_the_chunk_in_flight(tmp_path: Path) -> None:
    """Closing while a replayed chunk is being written: it completes and is marked, never lost or repeated."""
    fake = FakeSink(up=False)
    gate, entered = asyncio.Event(), asyncio.Event()
    real_write = fake.write

    async def gated(events: list[Event]) -> None:
        if fake.up:
            entered.set()
            await gate.wait()
        await real_write(events)

    fake.write = gated  # type: ignore[method-assign]
    path = tmp_path / "s.jsonl"
    sink = SpooledSink(fake, path, retry_seconds=0.001, max_retry_seconds=0.002)
    await sink.start()
    events = make_events(300)
    await sink.write(events)
    fake.up = True
    await within(entered.wait())  # the retry loop is inside the sink's write
    closing = asyncio.create_task(sink.aclose())  # runs before the gated write resumes
    gate.set()
    await within(closing)
    assert ids(fake.written) == ids(events) and not path.exists() and fake.closed


async def test_spool_removed_behind_our_back_does_not_spin(tmp_path: Path) -> None:
    fake = FakeSink(up=False)
    path = tmp_path / "s.jsonl"
    sink = SpooledSink(fake, path, retry_seconds=3600)
    await sink.start()
    await sink.write(make_events(3))
    path.unlink()
    fake.up = True
    await within(sink.aclose())
    assert sink.pending == 0 and fake.written == []


async def test_partial_replay_resumes_after_a_crash(tmp_path: Path) -> None:
    """A chunk marked done is not replayed again; a torn last line (crash mid-append) is dropped."""
    path = tmp_path / "s.jsonl"
    events = make_events(600)
    f = SpoolFile(path)
    f.append(b"".join(orjson.dumps(e) + b"\n" for e in events), len(events))
    chunk, lines, end = f.read(256)
    assert ids(chunk) == ids(events[:256]) and lines == 256
    f.advance(end, lines)
    with path.open("ab") as raw:
        raw.write(b'{"id": "torn", "ti')  # the process died here
    crashed = SpoolFile(path)  # the next process
    crashed.load()
    assert crashed.pending == 344 and crashed.offset == end
    rest, lines, _ = crashed.read(1000)
    assert ids(rest) == ids(events[256:]) and lines == 344
    assert path.read_bytes().endswith(b"\n")


async def test_stale_progress_mark_is_ignored(tmp_path: Path) -> None:
    """A `.done` left from an older spool (other token) never makes the new spool skip events."""
    path = tmp_path / "s.jsonl"
    path.with_name("s.jsonl.done").write_text("0123456789abcdef 300")
    f = SpoolFile(path)
    f.load()
    assert not path.with_name("s.jsonl.done").exists()  # no spool: stale mark removed
    path.with_name("s.jsonl.done").write_text("0123456789abcdef 300")
    events = make_events(10)
    f.append(b"".join(orjson.dumps(e) + b"\n" for e in events), 10)
    again = SpoolFile(path)
    again.load()
    assert again.pending == 10 and ids(again.read(100)[0]) == ids(events)


async def test_long_spool_is_compacted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spool_mod, "COMPACT_BYTES", 2000)
    path = tmp_path / "s.jsonl"
    events = make_events(40)
    f = SpoolFile(path)
    f.append(b"".join(orjson.dumps(e) + b"\n" for e in events), 40)
    size, token = path.stat().st_size, f.token
    _, lines, end = f.read(30)
    f.advance(end, lines)
    assert path.stat().st_size < size / 2 and f.token != token
    again = SpoolFile(path)
    again.load()
    assert again.pending == 10 and ids(again.read(100)[0]) == ids(events[30:])


async def test_spool_append_failure_is_a_sink_error_and_leaves_no_partial_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "s.jsonl"
    f = SpoolFile(path)
    f.append(orjson.dumps(make_events(1)[0]) + b"\n", 1)
    size = path.stat().st_size
    real_write = os.write

    def short_then_full(fd: int, data: Any) -> int:
        if len(data) > 10:
            return real_write(fd, bytes(data[:10]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", short_then_full)
    with pytest.raises(OSError):
        f.append(orjson.dumps(make_events(1)[0]) + b"\n", 1)
    monkeypatch.undo()
    assert path.stat().st_size == size and f.pending == 1

    def broken(self: SpoolFile, data: bytes, count: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(SpoolFile, "append", broken)
    sink = SpooledSink(FakeSink(up=False), tmp_path / "t.jsonl", retry_seconds=3600)
    await sink.start()
    with pytest.raises(SinkError, match="spool"):
        await sink.write(make_events(2))
    assert sink.pending == 0
    await sink.aclose()


async def test_duplicates_from_a_crashed_replay_are_skipped_by_the_store(tmp_path: Path) -> None:
    """A crash after a chunk reached the store but before it was marked done replays it: the store skips it."""
    db = Db(f"sqlite:///{tmp_path / 'state.db'}")
    events = make_events(10)
    store = db.sink()
    await store.start()
    await store.write(events[:6])  # written, then the process died before marking the spool
    await store.aclose()
    path = tmp_path / "s.jsonl"
    SpoolFile(path).append(b"".join(orjson.dumps(e) + b"\n" for e in events), 10)
    sink = SpooledSink(db.sink(), path)
    await sink.start()
    await within(sink.drained())
    await sink.aclose()
    assert [r.id for r in await db.rows()] == ids(events)
    assert await verify_store(db.url, db.chain) == []


async def test_jsonl_sink_behind_a_spool(tmp_path: Path) -> None:
    """The JSONL sink (another real sink) recovers too, with an intact chain."""
    trail = tmp_path / "dir" / "audit.jsonl"
    sink = SpooledSink(JsonlSink(trail), tmp_path / "spool.jsonl", retry_seconds=0.01, max_retry_seconds=0.02)
    await sink.start()
    events = make_events(5)
    await sink.write(events[:2])  # the directory is missing: append fails
    assert sink.pending == 2 and sink.errors == 1
    trail.parent.mkdir()
    await sink.write(events[2:])
    await within(sink.drained())
    await sink.aclose()
    assert [orjson.loads(line)["id"] for line in trail.read_bytes().splitlines()] == ids(events)
    assert verify_jsonl(trail) == []


# --- a real outage: PostgreSQL behind a TCP forwarder we can cut ------------------------------------------


class Forwarder:
    """127.0.0.1:<port> -> 127.0.0.1:5432. `cut` closes the listener and every connection; `restore` listens again."""

    def __init__(self, target_port: int = 5432) -> None:
        self.target_port = target_port
        self.port = 0
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()
        self.tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self.writers |= {writer, up_writer}
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.get_running_loop().create_task(self._pipe(src, dst))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    @staticmethod
    async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        dst.close()

    async def cut(self) -> None:
        assert self.server is not None
        self.server.close()
        for w in self.writers:
            w.transport.abort()
        self.writers.clear()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.server.wait_closed()
        self.server = None

    async def restore(self) -> None:
        await self.start()


@pytest.fixture
async def pg(tmp_path: Path) -> Any:
    db = Db(PG_URL)
    fwd = Forwarder()
    await fwd.start()
    try:
        yield db, fwd
    finally:
        if fwd.server is not None:
            await fwd.cut()
        await db.cleanup()


def forwarded(fwd: Forwarder) -> str:
    return with_port(PG_URL, fwd.port)


async def test_postgres_outage_spools_and_recovers(pg: tuple[Db, Forwarder], tmp_path: Path) -> None:
    db, fwd = pg
    sink = SpooledSink(StoreSink(forwarded(fwd), db.chain), tmp_path / "store.spool",
                       retry_seconds=0.02, max_retry_seconds=0.1)
    await sink.start()
    before, during, later = make_events(5), make_events(40), make_events(300)
    await sink.write(before)
    assert (sink.pending, sink.errors) == (0, 0)
    await fwd.cut()
    await within(sink.write(during))
    assert sink.pending == 40 and sink.errors >= 1
    await within(sink.write(later))
    assert sink.pending == 340
    errors = sink.errors
    await fwd.restore()
    await within(sink.drained())
    assert sink.errors >= errors and sink.pending == 0
    rows = await db.rows()
    assert [r.id for r in rows] == ids(before + during + later)
    assert [r.seq for r in rows] == list(range(1, 346))
    assert await verify_store(PG_URL, db.chain) == []
    after = make_events(3)
    await sink.write(after)  # straight to the store again
    assert sink.pending == 0 and [r.id for r in await db.rows()][-3:] == ids(after)
    await sink.aclose()
    assert not (tmp_path / "store.spool").exists()


async def test_postgres_down_at_shutdown_replayed_by_the_next_process(pg: tuple[Db, Forwarder],
                                                                      tmp_path: Path) -> None:
    db, fwd = pg
    path = tmp_path / "store.spool"
    first = SpooledSink(StoreSink(forwarded(fwd), db.chain), path, retry_seconds=0.02, max_retry_seconds=0.1)
    await first.start()
    events = make_events(500)
    await first.write(events[:100])
    await fwd.cut()
    await within(first.write(events[100:300]))
    await within(first.write(events[300:]))
    await within(first.aclose())  # the last drain attempt fails: the spool stays on disk
    assert path.exists() and first.pending == 400
    await fwd.restore()
    second = SpooledSink(StoreSink(forwarded(fwd), db.chain), path, retry_seconds=0.02, max_retry_seconds=0.1)
    await second.start()
    await within(second.drained())
    await second.aclose()
    rows = await db.rows()
    assert [r.id for r in rows] == ids(events)  # none lost, none twice, in order
    assert [r.seq for r in rows] == list(range(1, 501))
    assert await verify_store(PG_URL, db.chain) == [] and not path.exists()


async def test_postgres_down_at_startup(pg: tuple[Db, Forwarder], tmp_path: Path) -> None:
    db, fwd = pg
    url = forwarded(fwd)
    await fwd.cut()
    sink = SpooledSink(StoreSink(url, db.chain), tmp_path / "store.spool", retry_seconds=0.02, max_retry_seconds=0.1)
    await within(sink.start())  # does not raise
    assert sink.errors == 1
    events = make_events(20)
    await sink.write(events)
    assert sink.pending == 20
    await fwd.restore()
    await within(sink.drained())
    await sink.aclose()
    assert [r.id for r in await db.rows()] == ids(events)
    assert await verify_store(PG_URL, db.chain) == []
