"""Retention: prune the store's oldest audit events in batches, each chain staying verifiable.

`prune` works chain by chain, oldest first, `batch` events per transaction, never the chain's newest event
(the writers continue from it). For each batch it
1. reads the events after the chain's checkpoint and verifies them from it (links, hashes, indexed columns,
   the checkpoint's signature): a chain that does not verify is not pruned (pruning must not launder
   tampering into a signed checkpoint) and the problems are reported;
2. with `export`, writes them to `<export>/<chain>/<first seq>-<last seq>.jsonl.gz` (a temporary file,
   fsync'd, renamed, the directory fsync'd) before anything is deleted;
3. in one transaction: moves the checkpoint from seq K to the batch's last event (`UPDATE ... WHERE seq = K`:
   a concurrent pruner of the same chain updates nothing and backs off), adds the batch to the usage rollup
   (`audit_rollup`) and deletes the batch.
A crash before the commit leaves everything as it was plus an export file that the retry rewrites (same
first seq; a file from the crashed attempt with another last seq is removed), so nothing is lost and no
exported event appears twice. A crash after the commit is a finished batch.

Which events: older than `max_age`, plus the oldest beyond `max_events` or beyond `max_size` (bytes of the
audit table and its indexes as the database reports them, divided by the events it holds). Within a chain
the pruned part is a prefix: it ends before the chain's first event that is to be kept.

`Pruner` runs `prune` in the gateway every `interval` seconds (jittered), off the request path; every
replica may run one (they back off from each other per chain). `stile audit prune` runs it once.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import logging
import math
import os
import random
import re
import secrets
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from stile.config.model import VaultConfig
from stile.config.observe import RetentionConfig
from stile.observe import audit_rollup as rollup
from stile.observe.audit_chain import GENESIS, verify_events
from stile.observe.audit_checkpoint import CheckpointKeys, load_keys
from stile.observe.audit_schema import TABLE, audit_checkpoints, audit_events, metadata
from stile.observe.audit_store import (
    DB_ERRORS,
    _check_row,
    _engine,
    checkpoint_problems,
    checkpoints,
    row_event,
    sealed_text,
)
from stile.observe.spool import fsync_dir
from stile.tasks import spawn
from stile.vault.keyring import VaultError

log = logging.getLogger("stile.audit")
CRASH_ENV = "STILE_AUDIT_PRUNE_CRASH"  # test hook: "after-export" kills the process between export and delete
_T = audit_events.c
_C = audit_checkpoints.c
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class Limits:
    max_age: float | None = None  # seconds
    max_events: int | None = None
    max_size: int | None = None  # bytes
    batch: int = 5000
    export: Path | None = None

    @classmethod
    def of(cls, cfg: RetentionConfig) -> Limits:
        return cls(cfg.age_seconds, cfg.max_events, cfg.size_bytes, cfg.batch,
                   Path(cfg.export) if cfg.export else None)


@dataclass
class ChainReport:
    pruned: int = 0
    checkpoint: int = 0  # seq of the checkpoint afterwards (0: none)
    files: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


@dataclass
class PruneReport:
    cutoff: float | None = None  # events before this time were due (None: nothing due)
    chains: dict[str, ChainReport] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def pruned(self) -> int:
        return sum(c.pruned for c in self.chains.values())

    @property
    def problems(self) -> list[str]:
        return [p for c in self.chains.values() for p in c.problems]


class Concurrent(Exception):
    """Another pruner moved this chain's checkpoint first."""


async def table_bytes(conn: AsyncConnection) -> int:
    """The audit table's size with its indexes, as the database reports it."""
    if conn.dialect.name == "postgresql":
        return int((await conn.execute(sa.text(f"SELECT pg_total_relation_size('{TABLE}')"))).scalar() or 0)
    try:
        got = (await conn.execute(sa.text(
            "SELECT SUM(pgsize) FROM dbstat WHERE name IN "
            f"(SELECT name FROM sqlite_master WHERE tbl_name = '{TABLE}')"))).scalar()
        return int(got or 0)
    except DBAPIError:  # SQLite without the dbstat table: the whole file, free pages left out
        pages = (await conn.execute(sa.text("PRAGMA page_count"))).scalar() or 0
        free = (await conn.execute(sa.text("PRAGMA freelist_count"))).scalar() or 0
        size = (await conn.execute(sa.text("PRAGMA page_size"))).scalar() or 0
        return int((pages - free) * size)


async def cutoff(conn: AsyncConnection, limits: Limits, now: float) -> float | None:
    """Events stamped before this time are to be pruned (None: none are)."""
    cut = now - limits.max_age if limits.max_age is not None else None
    keep = limits.max_events
    total = int((await conn.execute(sa.select(sa.func.count()).select_from(audit_events))).scalar() or 0)
    if limits.max_size is not None and total:
        per_event = max(1, await table_bytes(conn) // total)
        keep = min(keep if keep is not None else total, limits.max_size // per_event)
    if keep is not None and total > keep:
        nth = (await conn.execute(sa.select(_T.ts).order_by(_T.ts).offset(total - keep).limit(1))).scalar()
        due = float(nth) if nth is not None else math.inf  # keep 0: every event (but each chain's newest)
        cut = max(cut if cut is not None else due, due)
    return cut


async def _prune_upto(conn: AsyncConnection, chain: str, cut: float) -> int:
    """The last seq of the chain's prefix to prune: before its first event to keep, never its newest event."""
    newest = (await conn.execute(sa.select(sa.func.max(_T.seq)).where(_T.chain == chain))).scalar()
    if newest is None:
        return 0
    first_kept = (await conn.execute(sa.select(sa.func.min(_T.seq)).where(_T.chain == chain, _T.ts >= cut))).scalar()
    return int(min(int(newest), int(first_kept) if first_kept is not None else int(newest))) - 1


def chain_dir(export: Path, chain: str) -> Path:
    safe = _UNSAFE.sub("_", chain)
    if safe != chain or safe.startswith("."):
        safe = f"{safe.lstrip('.')}-{hashlib.sha256(chain.encode()).hexdigest()[:8]}"
    return export / safe


def write_export(directory: Path, first: int, last: int, lines: list[bytes]) -> Path:
    """`<first>-<last>.jsonl.gz`, durable before it returns (an earlier attempt of that name is replaced). Blocking."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{first:012d}-{last:012d}.jsonl.gz"
    tmp = directory / f".{path.name}.{secrets.token_hex(4)}.tmp"
    try:
        with tmp.open("wb") as raw:
            with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, compresslevel=6) as gz:
                for line in lines:
                    gz.write(line)
                    gz.write(b"\n")
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    fsync_dir(directory)
    return path


def drop_other_attempts(path: Path, first: int) -> None:
    """After the commit: files of crashed attempts at the same batch start (this file holds their events). Only
    the committing pruner may do this: the checkpoint moved past `first` just now, so no other file from `first`
    is committed. Blocking."""
    for stale in path.parent.glob(f"{first:012d}-*.jsonl.gz"):
        if stale != path:
            stale.unlink(missing_ok=True)


def _crash_point(name: str) -> None:
    if os.environ.get(CRASH_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


def _check_batch(chain: str, rows: list[Any], mark: dict[str, Any] | None, keys: CheckpointKeys,
                 start: tuple[str, int]) -> tuple[list[str], dict[rollup.Key, rollup.Tally]]:
    """A batch's problems (checkpoint signature, links, hashes, indexed columns) and its usage rollup. Blocking."""
    pairs = [(f"chain {chain} seq {r.seq}", row_event(r.event, r.hash)) for r in rows]
    problems = checkpoint_problems(chain, mark, keys) if mark is not None else []
    problems += verify_events(pairs, start)
    problems += [p for r, (where, event) in zip(rows, pairs, strict=True) for p in _check_row(where, r, event)]
    return problems, rollup.tally(rows)


async def _batch(engine: AsyncEngine, chain: str, upto: int, limits: Limits, keys: CheckpointKeys,
                 report: ChainReport) -> bool:
    """Prune one batch of `chain` (at most up to seq `upto`); False when there is nothing more to do here."""
    async with engine.connect() as conn:
        mark = (await checkpoints(conn)).get(chain)
        base_hash, base_seq = (str(mark["hash"]), int(mark["seq"])) if mark is not None else (GENESIS, 0)
        last = min(upto, base_seq + limits.batch)
        if last <= base_seq:
            return False
        rows = list((await conn.execute(sa.select(audit_events).where(
            _T.chain == chain, _T.seq > base_seq, _T.seq <= last).order_by(_T.seq))).all())
    # the CPU work (parse, hash, compare, tally: ~30 µs an event) in a thread, not on the gateway's event loop
    problems, tallies = await asyncio.to_thread(_check_batch, chain, rows, mark, keys, (base_hash, base_seq))
    if not rows or rows[-1].seq != last:
        problems.append(f"chain {chain}: events {base_seq + 1}..{last} are not all there")
    if problems:
        async with engine.connect() as conn:
            if (await checkpoints(conn)).get(chain) != mark:  # another pruner committed between our two reads
                raise Concurrent(chain)
        report.problems += [f"not pruned: {p}" for p in problems]
        return False
    export = None
    if limits.export is not None:
        path = await asyncio.to_thread(write_export, chain_dir(limits.export, chain), base_seq + 1, last,
                                       [sealed_text(r.event, r.hash).encode() for r in rows])
        export = str(path)
        report.files.append(export)
    _crash_point("after-export")
    now = time.time()
    new: dict[str, Any] = {"chain": chain, "seq": last, "hash": str(rows[-1].hash), "ts": float(rows[-1].ts),
                           "pruned": (int(mark["pruned"]) if mark is not None else 0) + len(rows), "at": now,
                           "export": export}
    new["kid"], new["signature"] = keys.sign(new)
    try:
        async with engine.begin() as conn:
            if mark is not None:  # first statement: holds the chain against a concurrent pruner until commit
                moved = await conn.execute(sa.update(audit_checkpoints)
                                           .where(_C.chain == chain, _C.seq == base_seq).values(**new))
                if moved.rowcount != 1:
                    raise Concurrent(chain)
            else:
                await conn.execute(audit_checkpoints.insert().values(**new))
            await rollup.add(conn, chain, tallies)
            await conn.execute(sa.delete(audit_events).where(_T.chain == chain, _T.seq <= last))
    except (IntegrityError, Concurrent) as exc:
        if export is not None:
            await _drop_if_lost(engine, chain, export)
        raise Concurrent(chain) from exc
    if export is not None:
        await asyncio.to_thread(drop_other_attempts, Path(export), base_seq + 1)
    report.pruned += len(rows)
    report.checkpoint = last
    return last < upto


async def _drop_if_lost(engine: AsyncEngine, chain: str, export: str) -> None:
    """Another pruner committed this batch first: remove our export unless it is the very file it committed."""
    async with engine.connect() as conn:
        mark = (await checkpoints(conn)).get(chain)
    if mark is None or mark.get("export") != export:
        await asyncio.to_thread(Path(export).unlink, missing_ok=True)


async def prune(url: str, limits: Limits, keys: CheckpointKeys, now: float | None = None) -> PruneReport:
    """Prune what `limits` say is due, chain by chain, batch by batch. Database errors propagate (DB_ERRORS)."""
    started = time.monotonic()
    report = PruneReport()
    engine = _engine(url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(metadata.create_all, checkfirst=True)
        async with engine.connect() as conn:
            report.cutoff = cut = await cutoff(conn, limits, time.time() if now is None else now)
            if cut is None:
                return report
            names = sorted((await conn.execute(sa.select(_T.chain).distinct())).scalars())
            targets = {name: await _prune_upto(conn, name, cut) for name in names}
        for name, upto in targets.items():
            chain_report = report.chains.setdefault(name, ChainReport())
            try:
                more = True
                while more:
                    more = await _batch(engine, name, upto, limits, keys, chain_report)
                    await asyncio.sleep(0)  # let the gateway serve between batches
            except Concurrent:
                log.info("audit retention: chain %s is being pruned by another process", name)
            except VaultError as exc:
                chain_report.problems.append(f"not pruned: chain {name}: {exc}")
    finally:
        await engine.dispose()
        report.seconds = time.monotonic() - started
    return report


class Pruner:
    """`audit.retention` in the gateway: `prune` every `interval` seconds (jittered), logged, never raising."""

    def __init__(self, url: str, cfg: RetentionConfig, vault: VaultConfig | None, spool_dir: Path) -> None:
        self.url = url
        self.cfg = cfg
        self.limits = Limits.of(cfg)
        self.vault = vault
        self.spool_dir = spool_dir
        self.runs = 0
        self.pruned = 0
        self.failures = 0  # failed runs, and chains left unpruned because they do not verify
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = spawn(self._loop(), name="audit-retention")

    async def run_once(self) -> PruneReport:
        keys = await load_keys(self.url, self.vault, self.spool_dir, create=True)
        report = await prune(self.url, self.limits, keys)
        self.runs += 1
        self.pruned += report.pruned
        if report.pruned:
            log.info("audit retention: pruned %d events in %.1f s (%s)", report.pruned, report.seconds,
                     ", ".join(f"{n}: {c.pruned}" for n, c in report.chains.items() if c.pruned))
        for problem in report.problems:
            log.error("audit retention: %s", problem)
        self.failures += sum(1 for c in report.chains.values() if c.problems)
        return report

    async def _loop(self) -> None:
        await asyncio.sleep(min(self.cfg.interval, 30.0) * random.uniform(0.5, 1.0))
        while True:
            try:
                await self.run_once()
            except (*DB_ERRORS, VaultError) as exc:
                self.failures += 1
                log.warning("audit retention: prune failed, retrying in %.0f s: %s", self.cfg.interval, exc)
            await asyncio.sleep(self.cfg.interval * random.uniform(0.9, 1.1))

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
