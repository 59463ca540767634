"""Audit sinks: where sealed events go. A JSONL file and stdout live here; the store in audit_store.

Contract (every sink): `start()` reads its chain head; `write(events)` seals the (unsealed) events
onto its own chain and persists all of them, or raises `SinkError` having persisted none and left its
chain where it was; `aclose()` releases resources. Sinks run on the audit writer task, never on the
request path.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import os
import sys
from collections import deque
from pathlib import Path
from typing import Any, Protocol

import orjson

from stile.observe.audit_chain import GENESIS, Chain, verify_events

Event = dict[str, Any]
RECENT = 8192  # ids a JSONL sink remembers to skip replays (> what a crash can leave delivered but not checkpointed)


class SinkError(Exception):
    """A sink could not persist a batch (nothing of the batch was persisted)."""


class Sink(Protocol):
    name: str

    async def start(self) -> None: ...

    async def write(self, events: list[Event]) -> None: ...

    async def aclose(self) -> None: ...


class RecentIds:
    """The last `size` event ids written: a replay after a crash (WAL or spool) skips them, as the store does."""

    def __init__(self, size: int = RECENT) -> None:
        self.order: deque[str] = deque()
        self.ids: set[str] = set()
        self.size = size

    def add(self, eid: str) -> None:
        self.order.append(eid)
        self.ids.add(eid)
        if len(self.order) > self.size:
            self.ids.discard(self.order.popleft())


class JsonlSink:
    """Appends one sealed JSON line per event; the chain continues from the file's last line.

    Events whose id is among the file's last `RECENT` lines are skipped (replays after a crash). With
    `fsync` each batch is fsync'd (in a thread) before `write` returns (audit.durability: fsync)."""

    def __init__(self, path: Path, *, fsync: bool = False) -> None:
        self.name = f"jsonl:{path}"
        self.path = path
        self.fsync = fsync
        self.chain = Chain()
        self.recent = RecentIds()

    async def start(self) -> None:
        if self.path.exists():
            state = await asyncio.to_thread(tail_state, self.path, self.recent)
            self.chain = Chain(*state)

    async def write(self, events: list[Event]) -> None:
        fresh = [e for e in events if str(e.get("id")) not in self.recent.ids]
        if not fresh:
            return
        mark = self.chain.mark()
        data = b"".join(raw + b"\n" for _, raw in self.chain.seal_json(fresh))
        try:
            with self.path.open("ab") as f:
                f.write(data)
                if self.fsync:
                    f.flush()
                    await asyncio.to_thread(os.fsync, f.fileno())
        except OSError as exc:
            self.chain.rollback(mark)
            raise SinkError(f"cannot append to {self.path}: {exc}") from exc
        for e in fresh:
            self.recent.add(str(e.get("id")))

    def head(self) -> dict[str, object]:
        """Where this sink's chain ends (for `heads.json`)."""
        return {"seq": self.chain.seq, "hash": self.chain.prev}

    async def aclose(self) -> None:
        return None


class StdoutSink:
    """One sealed JSON line per event on standard output (for log shippers)."""

    name = "stdout"

    def __init__(self) -> None:
        self.chain = Chain()

    async def start(self) -> None:
        return None

    async def write(self, events: list[Event]) -> None:
        mark = self.chain.mark()
        data = b"".join(raw + b"\n" for _, raw in self.chain.seal_json(events))
        try:
            sys.stdout.buffer.write(data)
            sys.stdout.flush()
        except (OSError, ValueError) as exc:
            self.chain.rollback(mark)
            raise SinkError(f"cannot write to stdout: {exc}") from exc

    async def aclose(self) -> None:
        return None


def tail_state(path: Path, recent: RecentIds | None = None) -> tuple[str, int]:
    """(hash, seq) of a JSONL trail's last event: where its chain continues. Fills `recent` with the last ids."""
    last = b""
    lines: deque[bytes] = deque(maxlen=recent.size if recent is not None else 1)
    with path.open("rb") as f:
        for line in f:
            if line.strip():
                last = line
                lines.append(line)
    if recent is not None:
        for line in lines:
            try:
                eid = orjson.loads(line).get("id")
            except (orjson.JSONDecodeError, AttributeError):
                continue
            if eid is not None:
                recent.add(str(eid))
    if not last:
        return GENESIS, 0
    try:
        event = orjson.loads(last)
    except orjson.JSONDecodeError:
        return GENESIS, 0
    return str(event.get("hash", GENESIS)), int(event.get("seq", 0))


def read_jsonl(path: Path) -> list[tuple[str, Event | None]]:
    out: list[tuple[str, Event | None]] = []
    with (gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb")) as f:
        for n, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                event = orjson.loads(raw)
            except orjson.JSONDecodeError:
                event = None
            out.append((f"line {n}", event if isinstance(event, dict) else None))
    return out


def verify_jsonl(path: Path) -> list[str]:
    """Problems in a JSONL trail's chain, one line each ("line N: ..."); empty when intact.

    A `.gz` file is an export of pruned store events (`audit_retention`): its chain starts where its first
    event says (that event's `prev` is the previous file's last hash, or the genesis)."""
    events = read_jsonl(path)
    if path.suffix == ".gz" and events and events[0][1] is not None:
        first = events[0][1]
        with contextlib.suppress(TypeError, ValueError):
            return verify_events(events, (str(first.get("prev")), int(first.get("seq") or 1) - 1))
    return verify_events(events)
