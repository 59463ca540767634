"""Usage of pruned events: per chain, hour and (agent, user, tool, upstream), kept in `stile_audit_rollup`.

Pruning adds each batch to the rollup in the same transaction that deletes it, so `stile usage` (which adds
the rollup to the events still stored) reports the same calls, errors and cost after pruning as before.
Latency percentiles of pruned hours come from a histogram of 10% wide buckets (`bucket`/`bucket_value`):
within 10% of the exact value. Time bounds apply to whole hours for pruned events (an hour counts when it
starts inside [since, until)).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from stile.observe.audit_schema import audit_rollup

_BASE, _STEP = 0.001, 1.1  # bucket i holds latencies in (_BASE * _STEP**(i-1), _BASE * _STEP**i] ms
_T = audit_rollup.c
GROUP_COLUMNS = {"agent": _T.agent, "user": _T.principal_user, "tool": _T.tool, "upstream": _T.upstream}


def bucket(ms: float) -> int:
    return 0 if ms <= _BASE else math.ceil(math.log(ms / _BASE, _STEP) - 1e-9)


def bucket_value(index: int) -> float:
    """What a bucket reports: its upper bound (never below the true latency, at most 10% above it)."""
    return round(_BASE * _STEP ** index, 3)


@dataclass
class Tally:
    calls: int = 0
    errors: int = 0
    cost: float = 0.0
    latency: dict[int, int] = field(default_factory=dict)

    def add(self, outcome: Any, latency_ms: Any, cost: Any) -> None:
        self.calls += 1
        self.errors += outcome != "ok"
        if isinstance(cost, int | float) and not isinstance(cost, bool):
            self.cost += float(cost)
        if isinstance(latency_ms, int | float) and not isinstance(latency_ms, bool):
            b = bucket(float(latency_ms))
            self.latency[b] = self.latency.get(b, 0) + 1

    def merge(self, calls: int, errors: int, cost: float, latency: dict[int, int]) -> None:
        self.calls += calls
        self.errors += errors
        self.cost += cost
        for b, n in latency.items():
            self.latency[b] = self.latency.get(b, 0) + n


Key = tuple[float, str | None, str | None, str | None, str | None]  # hour, agent, user, tool, upstream


def tally(rows: Iterable[Any]) -> dict[Key, Tally]:
    """Rows with ts, agent, principal_user, tool, upstream, outcome, latency_ms, cost (the indexed columns)."""
    out: dict[Key, Tally] = {}
    for r in rows:
        key = (float(int(r.ts // 3600) * 3600), r.agent, r.principal_user, r.tool, r.upstream)
        out.setdefault(key, Tally()).add(r.outcome, r.latency_ms, r.cost)
    return out


def row_key(chain: str, key: Key) -> str:
    return hashlib.sha256(orjson.dumps([chain, *key])).hexdigest()


def _histogram(text: str) -> dict[int, int]:
    raw = orjson.loads(text)
    return {int(k): int(v) for k, v in raw.items()} if isinstance(raw, dict) else {}


async def add(conn: AsyncConnection, chain: str, tallies: dict[Key, Tally]) -> None:
    """Add `tallies` to the chain's rollup rows (inside the pruning transaction, which holds the chain)."""
    keyed = {row_key(chain, k): (k, t) for k, t in tallies.items()}
    existing = {}
    ids = list(keyed)
    for i in range(0, len(ids), 500):
        rows = await conn.execute(sa.select(_T.key, _T.calls, _T.errors, _T.cost, _T.latency)
                                  .where(_T.key.in_(ids[i:i + 500])))
        existing.update({r.key: r for r in rows})
    inserts, updates = [], []
    for rid, (key, t) in keyed.items():
        old = existing.get(rid)
        if old is not None:
            t.merge(int(old.calls), int(old.errors), float(old.cost), _histogram(old.latency))
            updates.append({"k": rid, "calls": t.calls, "errors": t.errors, "cost": round(t.cost, 6),
                            "latency": orjson.dumps(t.latency, option=orjson.OPT_NON_STR_KEYS).decode()})
        else:
            hour, agent, user, tool, upstream = key
            inserts.append({"key": rid, "chain": chain, "hour": hour, "agent": agent, "principal_user": user,
                            "tool": tool, "upstream": upstream, "calls": t.calls, "errors": t.errors,
                            "cost": round(t.cost, 6),
                            "latency": orjson.dumps(t.latency, option=orjson.OPT_NON_STR_KEYS).decode()})
    if updates:  # one executemany
        await conn.execute(sa.update(audit_rollup).where(_T.key == sa.bindparam("k")).values(
            calls=sa.bindparam("calls"), errors=sa.bindparam("errors"), cost=sa.bindparam("cost"),
            latency=sa.bindparam("latency")), updates)
    if inserts:
        await conn.execute(audit_rollup.insert(), inserts)


async def read(conn: AsyncConnection, by: str, since: float | None, until: float | None) -> dict[str | None, Tally]:
    """The rollup per `by` value for hours starting in [since, until); empty when there is no rollup table."""
    if not await conn.run_sync(lambda c: sa.inspect(c).has_table(audit_rollup.name)):
        return {}
    query = sa.select(GROUP_COLUMNS[by].label("k"), _T.calls, _T.errors, _T.cost, _T.latency)
    if since is not None:
        query = query.where(_T.hour >= since)
    if until is not None:
        query = query.where(_T.hour < until)
    out: dict[str | None, Tally] = {}
    for r in (await conn.execute(query)).all():
        out.setdefault(r.k, Tally()).merge(int(r.calls), int(r.errors), float(r.cost), _histogram(r.latency))
    return out
