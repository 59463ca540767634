"""Audit store size per event, and prune throughput (SQLite file and the local Postgres).

    python -m bench.audit_retention --events 50000 [--pg postgresql://postgres@127.0.0.1:5432/postgres]

Events are built by the gateway's own writer path (`AuditLog.build`) from what a default `tools/call`
records, sealed and inserted by `StoreSink` in 1024-event batches (what the writer does). Bytes per event:
the audit table with its indexes as the database reports it (SQLite `dbstat`, Postgres
`pg_total_relation_size` after VACUUM), divided by the events. Then `prune` removes all but each chain's
newest event, with and without export, and reports events per second.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shutil
import tempfile
import time
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from stile.observe.audit import AuditLog
from stile.observe.audit_checkpoint import CheckpointKeys, kid_for
from stile.observe.audit_retention import Limits, prune, table_bytes
from stile.observe.audit_store import StoreSink
from stile.stores.keys import async_url

CHAINS = 3


def _events(n: int, boot: str) -> list[dict[str, object]]:
    log = AuditLog([])
    out = []
    now = time.time() - 86400
    for i in range(n):
        request = (i, secrets.token_hex(16), "main", "tools/call", "modern", f"agent-{i % 7}", f"user-{i % 50}",
                   ["engineering"], "api_key", {"title": f"note {i}", "text": "some words of a note"}, 96, 0.00042,
                   None)
        outcome = ("ok", 0.00131, "notes__add_note", "notes", "add_note", None, None, None, 142, False)
        out.append(log.build(f"{boot}-{i}", now + i * 0.01, request, outcome, None))
    return out


async def _fill(url: str, n: int) -> None:
    boot = secrets.token_hex(6)
    per_chain = n // CHAINS
    for c in range(CHAINS):
        sink = StoreSink(url, f"bench-{c}")
        await sink.start()
        events = _events(per_chain, f"{boot}{c}")
        for i in range(0, len(events), 1024):
            await sink.write(events[i:i + 1024])
        await sink.aclose()


async def _bytes(url: str) -> tuple[int, int]:
    engine = create_async_engine(async_url(url), isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            if conn.dialect.name == "postgresql":
                await conn.execute(sa.text("VACUUM ANALYZE stile_audit_events"))
            count = int((await conn.execute(sa.text("SELECT COUNT(*) FROM stile_audit_events"))).scalar() or 0)
            return await table_bytes(conn), count
    finally:
        await engine.dispose()


async def _run(url: str, n: int, label: str, tmp: Path) -> None:
    await _fill(url, n)
    size, count = await _bytes(url)
    print(f"{label}: {count} events, {size / count:.0f} bytes per event (table + indexes)")
    key = secrets.token_bytes(32)
    keys = CheckpointKeys({kid_for("file", key): key}, kid_for("file", key))
    export = tmp / f"export-{label}"
    started = time.perf_counter()
    report = await prune(url, Limits(max_events=1, batch=5000, export=export), keys)
    seconds = time.perf_counter() - started
    exported = sum(p.stat().st_size for p in export.rglob("*.gz"))
    print(f"{label}: pruned {report.pruned} with export in {seconds:.2f} s = {report.pruned / seconds:,.0f} events/s;"
          f" export {exported / max(1, report.pruned):.0f} bytes per event (gzip)")
    await _fill(url, n)
    started = time.perf_counter()
    report = await prune(url, Limits(max_events=1, batch=5000), keys)
    seconds = time.perf_counter() - started
    rate = report.pruned / seconds
    print(f"{label}: pruned {report.pruned} without export in {seconds:.2f} s = {rate:,.0f} events/s")


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=30_000)
    parser.add_argument("--pg", default=os.environ.get("STILE_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres"))
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="stile-bench-audit-"))
    try:
        await _run(f"sqlite:///{tmp / 'state.db'}", args.events, "sqlite", tmp)
        name = f"stile_bench_{secrets.token_hex(4)}"
        server = make_url(args.pg).render_as_string(hide_password=False)
        admin = await asyncpg.connect(server)
        await admin.execute(f'CREATE DATABASE "{name}"')
        try:
            await _run(make_url(args.pg).set(database=name).render_as_string(hide_password=False), args.events,
                       "postgres", tmp)
        finally:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await admin.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
