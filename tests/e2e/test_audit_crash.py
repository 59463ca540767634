"""Acknowledged means recorded: SIGKILL a real gateway in the middle of a concurrent burst, restart it on
the same config, and every call whose reply a client received must be in the trail (the store and the
JSONL file), once each, with `stile audit verify` passing.

The kill comes once enough replies have arrived (a count, not a timer), while 16 clients keep calling.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import yaml
from typer.testing import CliRunner

from stile.cli.main import app
from tests.e2e.helpers import modern_headers, modern_meta
from tests.support import REPO, free_port, notes_upstream, stop, wait_http

CLIENTS = 16
KILL_AFTER = 1500  # acknowledged calls before the SIGKILL (the clients keep calling until it lands)


@pytest.fixture
def notes() -> Iterator[str]:
    with notes_upstream() as url:
        yield url


@contextlib.contextmanager
def gateway(cfg: Path, port: int, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("ab") as logf:
        proc = subprocess.Popen([sys.executable, "-m", "stile", "serve", "--config", str(cfg), "--port", str(port)],
                                stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO)
        try:
            wait_http(f"http://127.0.0.1:{port}/healthz", proc, log=log)
            yield proc
        finally:
            stop(proc)


def _call(title: str, rid: int) -> bytes:
    return orjson.dumps({"jsonrpc": "2.0", "id": rid, "method": "tools/call",
                         "params": {"name": "notes__add_note", "arguments": {"title": title, "text": "x"},
                                    "_meta": modern_meta()}})


def _answered(body: bytes) -> bool:
    """A JSON-RPC result, as JSON or as the data of an SSE event."""
    for chunk in [body, *(line[5:] for line in body.splitlines() if line.startswith(b"data:"))]:
        with contextlib.suppress(orjson.JSONDecodeError):
            message = orjson.loads(chunk)
            if isinstance(message, dict) and "result" in message:
                return True
    return False


async def _burst(url: str, proc: subprocess.Popen[bytes]) -> set[str]:
    """16 clients call until the gateway is killed; the titles of every call whose reply arrived."""
    acked: set[str] = set()
    killed = asyncio.Event()
    headers = modern_headers("tools/call", "notes__add_note")

    async def client(n: int, http: aiohttp.ClientSession) -> None:
        for i in range(1_000_000):
            if killed.is_set():
                return
            title = f"c{n}-{i}"
            try:
                async with http.post(url, data=_call(title, i), headers=headers) as resp:
                    body = await resp.read()
            except aiohttp.ClientError:
                return  # the gateway is gone
            assert resp.status == 200, body
            if _answered(body):
                acked.add(title)
                if len(acked) >= KILL_AFTER and not killed.is_set():
                    proc.send_signal(signal.SIGKILL)
                    killed.set()

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CLIENTS)) as http:
        await asyncio.gather(*(client(n, http) for n in range(CLIENTS)))
    return acked


def _stored_titles(db: Path) -> list[str]:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        rows = conn.execute("SELECT event FROM stile_audit_events WHERE method = 'tools/call' ORDER BY seq").fetchall()
    return [orjson.loads(r[0])["arguments"]["title"] for r in rows]


def _jsonl_titles(path: Path) -> list[str]:
    events = [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]
    return [e["arguments"]["title"] for e in events if e.get("method") == "tools/call"]


def _verify(cfg: Path) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["audit", "verify", "--config", str(cfg)])
    return result.exit_code, result.output


@pytest.mark.parametrize("durability", ["process", "fsync"])
def test_every_acknowledged_call_survives_a_sigkill(notes: str, tmp_path: Path, durability: str) -> None:
    db, trail = tmp_path / "stile.db", tmp_path / "audit.jsonl"
    config: dict[str, Any] = {"state": f"sqlite:///{db}", "upstreams": {"notes": {"url": notes}},
                              "virtual_servers": {"v": {"auth": "none"}},
                              "audit": {"jsonl": str(trail), "durability": durability}}
    cfg = tmp_path / "stile.yaml"
    cfg.write_text(yaml.safe_dump(config), encoding="utf-8")
    port, log = free_port(), tmp_path / "stile.log"

    with gateway(cfg, port, log) as proc:
        acked = asyncio.run(_burst(f"http://127.0.0.1:{port}/mcp/v", proc))
        assert proc.wait(timeout=30) == -signal.SIGKILL
    assert len(acked) >= KILL_AFTER
    lost = acked - set(_stored_titles(db))
    assert lost, "the kill left nothing in flight: the burst does not exercise the crash"
    code, output = _verify(cfg)  # the chains are intact, but verify sees what the WAL still holds
    assert code == 1 and "acknowledged events are not in the trail yet" in output, output

    with gateway(cfg, port, log):  # the same config: it replays what the killed process had acknowledged
        pass  # a graceful stop writes everything queued

    stored = _stored_titles(db)
    missing = acked - set(stored)
    assert not missing, f"{len(missing)} of {len(acked)} acknowledged calls are not in the store: {sorted(missing)[:5]}"
    assert len(stored) == len(set(stored)), "a replayed event was stored twice"
    in_file = _jsonl_titles(trail)
    assert not acked - set(in_file), f"{len(acked - set(in_file))} acknowledged calls are not in {trail.name}"
    assert len(in_file) == len(set(in_file)), "a replayed event was written to the JSONL file twice"

    code, output = _verify(cfg)
    assert code == 0 and output.count("chain intact") == 2, output

    with contextlib.closing(sqlite3.connect(db)) as conn, conn:  # delete the newest events: the chain stays intact
        conn.execute("DELETE FROM stile_audit_events WHERE seq > (SELECT max(seq) - 3 FROM stile_audit_events)")
    code, output = _verify(cfg)
    assert code == 1 and "3 events missing at the tail" in output, output
