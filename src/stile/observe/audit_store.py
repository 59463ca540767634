"""The audit sink for the state store (SQLite or Postgres): one row per sealed event in `stile_audit_events`.

Each write is one transaction: read the chain's head (highest seq), skip events whose id is already
stored (a spool replay after a crash), seal the rest onto the head and insert them. After a write
the sink remembers the head, so the next batch is a single INSERT; a conflict (another replica, a
replayed id) falls back to reading the head and deduplicating. Replicas may share a
chain: if another replica inserted the same (chain, seq) first, the insert conflicts, the transaction
rolls back, and the sink re-reads the head and re-seals (bounded). Any other database error is a
`SinkError` with nothing persisted. `verify_store` re-checks the chains and the indexed copies.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import orjson
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from stile.observe.audit_chain import GENESIS, Chain, verify_events
from stile.observe.audit_checkpoint import CheckpointKeys
from stile.observe.audit_schema import CHECKPOINTS, TABLE, audit_checkpoints, audit_events, metadata
from stile.observe.audit_sinks import Event, SinkError
from stile.stores.keys import async_url, sqlite_wal

log = logging.getLogger("stile.audit")
ATTEMPTS = 20  # re-seals after a (chain, seq) conflict before giving up
_IN_CHUNK = 500  # ids per IN (...) query
DB_ERRORS = (SQLAlchemyError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError)
_T = audit_events.c
_C = audit_checkpoints.c
# Indexed copies verified against the event JSON (besides chain, which the event does not carry).
CHECKED = ("id", "seq", "ts", "agent", "principal_user", "virtual_server", "method", "tool", "upstream",
           "outcome", "latency_ms", "upstream_ms", "cost", "hash")


def _text(value: Any, limit: int) -> str | None:
    """A column copy of a string field: NULs dropped (Postgres refuses them) and cut to the column's length."""
    return None if value is None else str(value).replace("\x00", "")[:limit]


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _ts(value: Any) -> float:
    try:
        return datetime.fromisoformat(str(value)).timestamp()
    except ValueError:
        return 0.0


def columns(event: Event) -> dict[str, Any]:
    """The indexed column values of a sealed event (what is inserted, and what verify expects)."""
    principal = event.get("principal")
    p = principal if isinstance(principal, dict) else {}
    return {
        "id": str(event.get("id")), "seq": event.get("seq"), "ts": _ts(event.get("time")),
        "agent": _text(p.get("agent"), 256), "principal_user": _text(p.get("user"), 256),
        "virtual_server": _text(event.get("virtual_server"), 128), "method": _text(event.get("method"), 128),
        "tool": _text(event.get("tool"), 256), "upstream": _text(event.get("upstream"), 128),
        "outcome": _text(event.get("outcome"), 32) or "", "latency_ms": _num(event.get("latency_ms")),
        "upstream_ms": _num(event.get("upstream_ms")), "cost": _num(event.get("cost")), "hash": event.get("hash"),
    }


_HASH_FIELD = ',"hash":"'
_HASH_TAIL = len(_HASH_FIELD) + 64 + 2  # ,"hash":"<64 hex digits>"}


def body_text(raw: bytes) -> str:
    """What the `event` column holds: the sealed event's JSON without its `hash` (the `hash` column has it),
    i.e. exactly the canonical body the hash covers. Saves ~75 bytes an event over storing it twice."""
    return (raw[:-_HASH_TAIL] + b"}").decode()


def sealed_text(text: str, hash_: str) -> str:
    """A row's whole sealed event JSON (as the JSONL sink writes it). Rows written before `body_text` hold it
    already (a canonical body never ends with `hash`: its keys are sorted and `id`, `time`, ... follow)."""
    if text[-_HASH_TAIL:-_HASH_TAIL + len(_HASH_FIELD)] == _HASH_FIELD:
        return text
    return f'{text[:-1]}{_HASH_FIELD}{hash_}"}}'


def row_event(text: str, hash_: str) -> Event | None:
    """A row's event with its `hash` (from the column when the JSON does not carry it); None if unreadable."""
    event = _parse(text)
    if event is not None and "hash" not in event:
        event["hash"] = hash_
    return event


def _engine(url: str) -> AsyncEngine:
    if make_url(url).get_backend_name() == "sqlite":
        engine = create_async_engine(async_url(url))
        sa.event.listen(engine.sync_engine, "connect", sqlite_wal)
        return engine
    # Pre-ping so a connection broken by an outage is replaced rather than failing the next batch;
    # timeouts so an unreachable database fails the write (and the spool takes over) instead of hanging.
    return create_async_engine(async_url(url), pool_pre_ping=True,
                               connect_args={"timeout": 10, "command_timeout": 30})


class StoreSink:
    """Writes sealed events to the state store's audit table, on chain `chain`."""

    def __init__(self, url: str, chain: str = "default") -> None:
        if not 0 < len(chain) <= 64:
            raise ValueError("an audit chain name has 1 to 64 characters")
        self.url = url
        self.chain = chain
        self.name = f"store:{make_url(url).get_backend_name()}"
        self._engine: AsyncEngine | None = None
        self._created = False
        self._head: tuple[str, int] | None = None  # (hash, seq) after this sink's last insert

    async def start(self) -> None:
        """Create the engine and the table (if missing); `SinkError` if the database is unreachable."""
        await self._ensure()

    async def _ensure(self) -> AsyncEngine:
        if self._engine is None:
            self._engine = _engine(self.url)
        if not self._created:
            try:
                async with self._engine.begin() as conn:
                    await conn.run_sync(metadata.create_all, checkfirst=True)
            except IntegrityError:
                pass  # another process created the table (or an index) at the same moment
            except DB_ERRORS as exc:
                raise SinkError(f"cannot create {TABLE}: {exc}") from exc
            self._created = True
        return self._engine

    async def write(self, events: list[Event]) -> None:
        if not events:
            return
        engine = await self._ensure()
        try:
            for _ in range(ATTEMPTS):
                try:
                    async with engine.begin() as conn:
                        head = await self._insert(conn, events, self._head)
                    self._head = head
                    return
                except IntegrityError as exc:  # a replica took these seqs (or ids) first: re-read and re-seal
                    log.debug("audit store chain %s: conflict, re-sealing: %s", self.chain, exc)
                    self._head = None
        except DB_ERRORS as exc:
            raise SinkError(f"cannot write {len(events)} audit events to the store: {exc}") from exc
        raise SinkError(f"chain {self.chain}: still conflicting after {ATTEMPTS} attempts")

    async def _insert(self, conn: AsyncConnection, events: list[Event],
                      cached: tuple[str, int] | None) -> tuple[str, int]:
        """Seal and insert; returns the new head. With a cached head (this sink wrote last) it is one INSERT:
        a replica's insert or an already-stored id then conflicts, and the retry reads the head and dedupes."""
        if cached is not None:
            chain, fresh = Chain(*cached), events
        else:
            head = (await conn.execute(sa.select(_T.seq, _T.hash).where(_T.chain == self.chain)
                                       .order_by(_T.seq.desc()).limit(1))).first()
            if head is None:  # a pruned chain continues from its checkpoint (pruning keeps the newest event)
                head = (await conn.execute(sa.select(_C.seq, _C.hash).where(_C.chain == self.chain))).first()
            chain = Chain(head.hash, head.seq) if head is not None else Chain(GENESIS, 0)
            seen = await _stored_ids(conn, [str(e.get("id")) for e in events])
            fresh = []
            for event in events:
                if str(event.get("id")) not in seen:
                    seen.add(str(event.get("id")))
                    fresh.append(event)
        if fresh:
            rows = [{**columns(e), "chain": self.chain, "event": body_text(raw)} for e, raw in chain.seal_json(fresh)]
            await conn.execute(audit_events.insert(), rows)
        return chain.mark()

    def head(self) -> dict[str, object] | None:
        """Where this sink last left its chain (for `heads.json`); None before its first write."""
        if self._head is None:
            return None
        return {"chain": self.chain, "seq": self._head[1], "hash": self._head[0]}

    async def aclose(self) -> None:
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None
            self._created = False


async def _stored_ids(conn: AsyncConnection, ids: list[str]) -> set[str]:
    found: set[str] = set()
    for i in range(0, len(ids), _IN_CHUNK):
        rows = await conn.execute(sa.select(_T.id).where(_T.id.in_(ids[i:i + _IN_CHUNK])))
        found.update(r.id for r in rows)
    return found


async def _has_table(conn: AsyncConnection) -> bool:
    return bool(await conn.run_sync(lambda c: sa.inspect(c).has_table(TABLE)))


async def chain_names(url: str) -> list[str]:
    """The chains in the store's audit table, sorted (empty if there is no table)."""
    engine = _engine(url)
    try:
        async with engine.connect() as conn:
            if not await _has_table(conn):
                return []
            return list((await conn.execute(sa.select(_T.chain).distinct().order_by(_T.chain))).scalars())
    finally:
        await engine.dispose()


async def chain_end(url: str, chain: str, ids: list[str]) -> tuple[int, set[str]]:
    """(highest seq of `chain`, which of `ids` are stored) — for verify's tail check. Database errors propagate."""
    engine = _engine(url)
    try:
        async with engine.connect() as conn:
            if not await _has_table(conn):
                return 0, set()
            seq = (await conn.execute(sa.select(sa.func.max(_T.seq)).where(_T.chain == chain))).scalar()
            return int(seq or 0), await _stored_ids(conn, ids)
    finally:
        await engine.dispose()


async def chain_summaries(url: str) -> list[tuple[str, int, int, int, int]]:
    """Per chain: (name, events stored, first seq, last seq, events pruned before them), sorted by name."""
    engine = _engine(url)
    try:
        async with engine.connect() as conn:
            if not await _has_table(conn):
                return []
            marks = await checkpoints(conn)
            rows = (await conn.execute(sa.select(_T.chain, sa.func.count(), sa.func.min(_T.seq), sa.func.max(_T.seq))
                                       .group_by(_T.chain).order_by(_T.chain))).all()
            return [(r[0], int(r[1]), int(r[2]), int(r[3]), int(marks[r[0]]["pruned"]) if r[0] in marks else 0)
                    for r in rows]
    finally:
        await engine.dispose()


def _check_row(where: str, row: Any, event: Event | None) -> list[str]:
    """Problems where a row's indexed columns disagree with its event JSON."""
    if event is None:
        return []
    expected = columns(event)
    return [f"{where}: column {name} is {getattr(row, name)!r} but the event says {expected[name]!r} (modified)"
            for name in CHECKED if getattr(row, name) != expected[name]]


def _parse(text: str) -> Event | None:
    try:
        event = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    return event if isinstance(event, dict) else None


async def checkpoints(conn: AsyncConnection) -> dict[str, dict[str, Any]]:
    """Every chain's checkpoint (empty before the first prune, or without the table)."""
    if not await conn.run_sync(lambda c: sa.inspect(c).has_table(CHECKPOINTS)):
        return {}
    return {r.chain: dict(r._mapping) for r in (await conn.execute(sa.select(audit_checkpoints))).all()}


def checkpoint_problems(name: str, checkpoint: dict[str, Any], keys: CheckpointKeys | None) -> list[str]:
    where = f"chain {name} checkpoint (seq {checkpoint['seq']})"
    verdict = keys.check(checkpoint) if keys is not None else None
    if verdict is None:
        notes = "; ".join(keys.notes) if keys is not None and keys.notes else "no checkpoint keys loaded"
        return [f"{where}: signed with key {checkpoint['kid']}, which this verify cannot read ({notes}): run it "
                "with --config where the gateway runs, or with the vault master key set"]
    return [] if verdict else [f"{where}: signature does not match (the checkpoint was modified or forged)"]


VERIFY_PAGE = 10_000


async def _pages(conn: AsyncConnection, chain: str) -> AsyncIterator[list[Any]]:
    after: int | None = None
    while True:
        query = sa.select(audit_events).where(_T.chain == chain)
        if after is not None:
            query = query.where(_T.seq > after)
        rows = (await conn.execute(query.order_by(_T.seq).limit(VERIFY_PAGE))).all()
        if not rows:
            return
        yield list(rows)
        after = int(rows[-1].seq)


async def verify_store(url: str, chain: str | None = None, keys: CheckpointKeys | None = None) -> list[str]:
    """Problems in the store's audit chains (every chain if `chain` is None), one line each; empty when intact.

    Checks each chain's links and hashes in seq order, from its signed checkpoint when it was pruned, and that
    the indexed columns agree with the event JSON. Database errors propagate (SQLAlchemyError / OSError).
    """
    engine = _engine(url)
    problems: list[str] = []
    try:
        async with engine.connect() as conn:
            if not await _has_table(conn):
                return []
            marks = await checkpoints(conn)
            names = [chain] if chain is not None else sorted(
                {*(await conn.execute(sa.select(_T.chain).distinct())).scalars(), *marks})
            for name in names:
                found = await _verify_chain(conn, name, marks.get(name), keys)
                if found and (moved := (await checkpoints(conn)).get(name)) != marks.get(name):
                    found = await _verify_chain(conn, name, moved, keys)  # pruned meanwhile: again from the new one
                problems += found
    finally:
        await engine.dispose()
    return problems


async def _verify_chain(conn: AsyncConnection, name: str, mark: dict[str, Any] | None,
                        keys: CheckpointKeys | None) -> list[str]:
    """Problems of one chain, read a page at a time from its checkpoint `mark` (None: from the genesis)."""
    problems: list[str] = []
    start: tuple[str, int] = (GENESIS, 0)
    if mark is not None:
        problems += checkpoint_problems(name, mark, keys)
        start = (str(mark["hash"]), int(mark["seq"]))
    seen = 0
    async for rows in _pages(conn, name):  # a page at a time: a chain can hold millions of events
        seen += len(rows)
        pairs = [(f"chain {name} seq {r.seq}", row_event(r.event, r.hash)) for r in rows]
        problems += verify_events(pairs, start)
        for r, (where, event) in zip(rows, pairs, strict=True):
            problems += _check_row(where, r, event)
        last = pairs[-1][1]
        start = (str(last.get("hash")), int(last.get("seq") or 0)) if last is not None else (
            str(rows[-1].hash), int(rows[-1].seq))
    if mark is not None and not seen:
        problems.append(f"chain {name}: no events after its checkpoint (seq {start[1]}); pruning keeps "
                        "the newest event, so the rest were deleted")
    return problems
