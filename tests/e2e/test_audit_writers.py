"""Many writers, one audit table: three `stile serve` processes (distinct STILE_REPLICA_ID) write into one
Postgres database or one SQLite file at once; each seals its own chain, and verify, search and usage read
them all. Then retention in the gateway itself: the background pruner keeps the table bounded while the
chains stay verifiable (`stile audit verify --config`)."""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import sqlalchemy as sa
import yaml
from mcp import Client
from sqlalchemy.ext.asyncio import create_async_engine
from typer.testing import CliRunner

from stile.cli.main import app
from stile.observe.audit_query import Filter, search, usage
from stile.observe.audit_schema import CHECKPOINTS, TABLE
from stile.stores.keys import async_url
from tests import pg
from tests.e2e.helpers import modern_headers, modern_meta
from tests.support import notes_upstream, stile_server

CALLS = 40  # per replica, 8 at a time


@pytest.fixture(scope="module")
def notes() -> Iterator[str]:
    with notes_upstream() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgres"])
def state(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'state.db'}"
        return
    run = os.environ[pg.ENV]
    url = pg.create_run_database(run)
    try:
        yield url
    finally:
        pg.drop_run_database(run, url)


def _call(n: int) -> bytes:
    return orjson.dumps({"jsonrpc": "2.0", "id": n, "method": "tools/call",
                         "params": {"name": "notes__add_note", "arguments": {"title": f"t{n}", "text": "x"},
                                    "_meta": modern_meta()}})


async def _traffic(base: str, calls: int) -> int:
    """`calls` modern tool calls, 8 at a time; how many were answered."""
    headers = modern_headers("tools/call", "notes__add_note")
    sem = asyncio.Semaphore(8)

    async def one(http: aiohttp.ClientSession, n: int) -> bool:
        async with sem, http.post(f"{base}/mcp/v", data=_call(n), headers=headers) as resp:
            return resp.status == 200 and b'"result"' in await resp.read()

    async with aiohttp.ClientSession() as http:
        return sum(await asyncio.gather(*(one(http, n) for n in range(calls))))


async def _metrics(base: str) -> str:
    async with aiohttp.ClientSession() as http, http.get(f"{base}/metrics") as resp:
        assert resp.status == 200
        return await resp.text()


def _sample(text: str, name: str) -> float:
    return next(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " "))


async def _sql(url: str, text: str) -> list[Any]:
    engine = create_async_engine(async_url(url))
    try:
        async with engine.connect() as conn:
            return list((await conn.execute(sa.text(text))).all())
    finally:
        await engine.dispose()


def _config(notes: str, state: str, spool: Path, **audit: Any) -> dict[str, Any]:
    return {"state": state, "upstreams": {"notes": {"url": notes}}, "virtual_servers": {"v": {"auth": "none"}},
            "audit": {"spool_dir": str(spool), **audit}}


def test_three_replicas_write_their_own_chains_into_one_store(notes: str, state: str, tmp_path: Path) -> None:
    spool = tmp_path / "spool"  # shared, as workers on one host share it: each keeps its own WAL directory
    config = _config(notes, state, spool)
    with ExitStack() as stack:
        bases = [stack.enter_context(stile_server(config, env={"STILE_REPLICA_ID": f"r{i}"})) for i in range(3)]

        async def load() -> list[int]:
            answered = await asyncio.gather(*(_traffic(b, CALLS) for b in bases))
            async with Client(f"{bases[0]}/mcp/v", mode="legacy") as legacy:  # the other era, same trail
                await legacy.call_tool("notes__add_note", {"title": "legacy", "text": "y"})
            return list(answered)

        assert asyncio.run(load()) == [CALLS] * 3
        assert {p.name for p in (spool / "wal").iterdir()} >= {"r0", "r1", "r2"}
    # every server has stopped: all is flushed
    rows = asyncio.run(_sql(state, f"SELECT chain, COUNT(*) AS n, MIN(seq) AS lo, MAX(seq) AS hi FROM {TABLE} "
                                   "WHERE method = 'tools/call' GROUP BY chain ORDER BY chain"))
    assert [r.chain for r in rows] == ["r0", "r1", "r2"]
    assert [r.n for r in rows] == [CALLS + 1, CALLS, CALLS]
    gaps = asyncio.run(_sql(state, f"SELECT chain, COUNT(*) AS n, MAX(seq) AS hi FROM {TABLE} GROUP BY chain"))
    assert all(r.n == r.hi for r in gaps)  # one writer per chain: contiguous seqs, no conflict left a hole
    cfg_path = tmp_path / "stile.yaml"
    cfg_path.write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(app, ["audit", "verify", "--config", str(cfg_path)])
    assert result.exit_code == 0, result.output
    assert "chain intact" in result.output
    for chain in ("r0", "r1", "r2"):  # verify says what it covered, per writer
        assert f"  chain {chain}: seq 1-" in result.output
    found = asyncio.run(search(state, Filter(tool="notes__add_note", limit=None)))
    assert len(found) == 3 * CALLS + 1
    assert sum(r.calls for r in asyncio.run(usage(state, "tool")) if r.key == "notes__add_note") == 3 * CALLS + 1
    # tampering in one replica's chain is reported there, and only there
    asyncio.run(_tamper(state))
    result = CliRunner().invoke(app, ["audit", "verify", "--state", state])
    assert result.exit_code == 1 and "chain r1 seq 2" in result.output and "chain r0" not in result.output


async def _tamper(url: str) -> None:
    engine = create_async_engine(async_url(url))
    try:
        async with engine.begin() as conn:
            await conn.execute(sa.text(f"UPDATE {TABLE} SET event = REPLACE(event, '\"ok\"', '\"denied\"') "
                                       "WHERE chain = 'r1' AND seq = 2"))
    finally:
        await engine.dispose()


def test_the_gateway_prunes_in_the_background_and_every_chain_still_verifies(notes: str, state: str,
                                                                             tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    export = tmp_path / "export"
    config = _config(notes, state, spool,
                     retention={"max_events": 30, "interval": 1, "batch": 10, "export": str(export)})
    writer = f"gw-{secrets.token_hex(3)}"
    with stile_server(config, env={"STILE_REPLICA_ID": writer}) as base:
        assert asyncio.run(_traffic(base, 80)) == 80

        async def pruned() -> bool:
            marks = await _sql(state, f"SELECT seq FROM {CHECKPOINTS}")
            return bool(marks) and (await _sql(state, f"SELECT COUNT(*) AS n FROM {TABLE}"))[0].n <= 30

        deadline = time.monotonic() + 30
        while not asyncio.run(pruned()):  # the pruner runs about every second: wait for it, with a deadline
            assert time.monotonic() < deadline, "the background pruner never pruned"
        assert asyncio.run(_traffic(base, 5)) == 5  # still serving and writing after the prune
        metrics = asyncio.run(_metrics(base))
        assert _sample(metrics, "stile_audit_pruned_total") >= 50
        assert _sample(metrics, "stile_audit_prune_failures_total") == 0
    cfg_path = tmp_path / "stile.yaml"
    cfg_path.write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(app, ["audit", "verify", "--config", str(cfg_path)])
    assert result.exit_code == 0, result.output
    assert f"  chain {writer}: seq " in result.output and "pruned before it (signed checkpoint)" in result.output
    assert (spool / "audit-checkpoint.key").is_file()  # no vault master key here: the local key signed
    assert list((export / writer).glob("*.jsonl.gz"))
    usage_out = CliRunner().invoke(app, ["usage", "--config", str(cfg_path), "--by", "tool", "--json"])
    rows = [orjson.loads(line) for line in usage_out.output.splitlines()]
    assert sum(r["calls"] for r in rows if r["key"] == "notes__add_note") == 85  # pruned ones from the rollup
    # without the key file (verify elsewhere, --state only) the checkpoint is not taken on trust
    result = CliRunner().invoke(app, ["audit", "verify", "--state", state])
    assert result.exit_code == 1 and "cannot read" in result.output
