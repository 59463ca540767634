"""The audit hash chain: each event carries `seq`, its predecessor's hash (`prev`) and its own `hash`.

`hash` is SHA-256 over the predecessor's hash and the canonical JSON (sorted keys) of the event
without `hash`, so changing, deleting, inserting or reordering any event breaks the chain where it
happened. Every sink keeps its own chain (a JSONL file, a store chain), so a sink added later or
recovering from an outage still verifies on its own.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

import orjson

GENESIS = "0" * 64


def _digest(prev: str, body: bytes) -> str:
    return hashlib.sha256(prev.encode() + body).hexdigest()


def _canonical(event: dict[str, Any]) -> bytes:
    return orjson.dumps(event, option=orjson.OPT_SORT_KEYS)


def chain_hash(prev: str, event: dict[str, Any]) -> str:
    return _digest(prev, _canonical({k: v for k, v in event.items() if k != "hash"} if "hash" in event else event))


class Chain:
    """The head of one chain; `seal` links events onto it, `rollback` undoes a failed write."""

    def __init__(self, prev: str = GENESIS, seq: int = 0) -> None:
        self.prev = prev
        self.seq = seq

    def seal(self, events: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
        return [sealed for sealed, _ in self.seal_json(events)]

    def seal_json(self, events: Iterable[dict[str, Any]]) -> list[tuple[dict[str, Any], bytes]]:
        """Like `seal`, with each sealed event's JSON (the hashed canonical body plus `hash`, one serialization)."""
        out = []
        for event in events:
            self.seq += 1
            sealed = {**event, "seq": self.seq, "prev": self.prev}
            body = _canonical(sealed)
            sealed["hash"] = self.prev = _digest(self.prev, body)
            out.append((sealed, body[:-1] + b',"hash":"' + self.prev.encode() + b'"}'))
        return out

    def mark(self) -> tuple[str, int]:
        return self.prev, self.seq

    def rollback(self, mark: tuple[str, int]) -> None:
        self.prev, self.seq = mark


def verify_events(events: Iterable[tuple[str, dict[str, Any] | None]],
                  start: tuple[str, int] = (GENESIS, 0)) -> list[str]:
    """Problems in one chain given as (where, event) pairs in stored order; None marks an unreadable event.
    `start` is the (hash, seq) the first event follows: a pruned chain's checkpoint, else the genesis."""
    problems: list[str] = []
    prev, seq = start
    for where, event in events:
        if event is None:
            problems.append(f"{where}: not a JSON event")
            continue
        if event.get("seq") != seq + 1:
            problems.append(f"{where}: seq {event.get('seq')} follows {seq} (an event was deleted or moved)")
        if event.get("prev") != prev:
            problems.append(f"{where}: does not chain to the event before it (deleted, moved or inserted)")
        if chain_hash(str(event.get("prev")), event) != event.get("hash"):
            problems.append(f"{where}: content does not match its hash (modified)")
        prev, seq = str(event.get("hash")), int(event.get("seq") or 0)
    return problems
