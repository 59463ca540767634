"""What `stile audit verify` cannot see in the chain alone: a missing tail.

A hash chain proves that the events it holds are unmodified and in order, not that the last ones are
there: deleting the newest events leaves an intact (shorter) chain. Two local records close that gap
for a gateway's own trail (`verify --config`):

- `heads.json` in the write-ahead log directory: the (seq, hash) each sink last sealed, rewritten by the
  audit writer after every batch. A store chain or JSONL file that ends before that seq lost its tail
  (or had it deleted).
- the write-ahead log itself: records in segments of a process that died (no lock held) were
  acknowledged but may not be in the trail yet; the next gateway start replays them.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import orjson

from stile.observe.audit_wal import orphans, read_records

HEADS = "heads.json"


def write_heads(directory: Path, heads: dict[str, dict[str, Any]]) -> None:
    """Replace `heads.json` atomically (the rename survives a process crash; no fsync: it only grows)."""
    tmp = directory / f".{HEADS}.tmp"
    tmp.write_bytes(orjson.dumps(heads))
    os.replace(tmp, directory / HEADS)


def read_heads(directory: Path) -> dict[str, dict[str, Any]]:
    with contextlib.suppress(OSError, orjson.JSONDecodeError):
        heads = orjson.loads((directory / HEADS).read_bytes())
        if isinstance(heads, dict):
            return {k: v for k, v in heads.items() if isinstance(v, dict)}
    return {}


def pending_ids(directory: Path) -> list[str]:
    """Ids of the records dead processes left in the write-ahead log (acknowledged; replayed at the next start)."""
    if not directory.is_dir():
        return []
    ids: list[str] = []
    for path in orphans(directory):
        with contextlib.suppress(OSError):
            for line in read_records(path):
                with contextlib.suppress(orjson.JSONDecodeError, TypeError, IndexError, KeyError):
                    ids.append(str(orjson.loads(line)[0]))
    return ids


def head_problems(where: str, head: dict[str, Any] | None, seq: int) -> list[str]:
    """Problems of a trail whose last event has `seq`, given the head the gateway recorded."""
    if head is None or not isinstance(head.get("seq"), int):
        return []
    sealed = int(head["seq"])
    if seq < sealed:
        return [f"{where}: {sealed - seq} events missing at the tail (the trail ends at seq {seq}; the gateway "
                f"sealed up to seq {sealed})"]
    return []


def pending_problem(where: str, missing: int, directory: Path) -> list[str]:
    if not missing:
        return []
    return [f"{where}: {missing} acknowledged events are not in the trail yet: they wait in the write-ahead log "
            f"{directory} of a gateway that stopped (it replays them when it starts)"]
