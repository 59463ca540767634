"""Query the audit trail wherever it is kept: the state store table or a JSONL file.

A *source* is a state-store URL (``sqlite:///path.db``, ``postgresql://...``: the `stile_audit_events`
table, searched through its indexed columns) or a `Path` to a JSONL trail (scanned line by line).

- `search(source, flt)`: the newest `flt.limit` matching events, returned oldest first (time order).
- `tail(source, flt, follow)`: the same, then (with `follow`) every new matching event as it lands.
- `usage(source, by, since, until)`: per agent/user/tool/upstream: calls (events), errors (every outcome
  other than "ok": is_error, error, denied, unauthenticated), p50/p95 latency_ms (nearest rank) and the
  sum of cost units; in the store also of pruned events (their hourly rollup, `audit_rollup`).

Time bounds are inclusive below (`ts >= since`) and exclusive above (`ts < until`). `tool` is an exposed
name or `upstream.tool` (exposed names have no dot), each part may be a glob using `*` and `?` (any other
character is literal); every other filter matches exactly. `outcome` may list
several outcomes separated by commas. Failures the caller should show (unknown source, unreachable
database, unreadable file) raise `QueryError` with a one-line message.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, TypeVar

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine
from sqlalchemy.pool import NullPool

from stile.config.observe import AuditConfig
from stile.observe import audit_rollup as rollup
from stile.observe.audit_rollup import Tally, bucket_value
from stile.observe.audit_schema import TABLE, audit_events
from stile.stores.keys import async_url

Event = dict[str, Any]
T = TypeVar("T")
Matcher = Callable[[Event, float], bool]
UsageItem = tuple[str | None, str, float | None, float | None]
Source = str | Path
GroupBy = Literal["agent", "user", "tool", "upstream"]
GROUP_BY: tuple[GroupBy, ...] = ("agent", "user", "tool", "upstream")
FOLLOW_LOOKBACK = 10.0  # seconds: events stamped up to this long before the newest seen are still picked up
_RELATIVE = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_COLUMNS = {"agent": audit_events.c.agent, "user": audit_events.c.principal_user, "tool": audit_events.c.tool,
            "upstream": audit_events.c.upstream}


class QueryError(Exception):
    """The audit source cannot be queried (message fit to show a user)."""


class NoTrail(QueryError):
    """The audit source does not exist yet: no SQLite state file or JSONL file (nothing written; or a wrong path)."""


def audit_source(audit: AuditConfig, state_url: str | None) -> Source | None:
    """Where a gateway's trail can be read: its state store when `audit.store`, else its `audit.jsonl` file."""
    if audit.store and state_url:
        return state_url
    return Path(audit.jsonl) if audit.jsonl else None


@dataclass(frozen=True)
class Filter:
    agent: str | None = None
    user: str | None = None
    tool: str | None = None  # exact, or a glob with * and ?
    upstream: str | None = None
    outcome: str | None = None  # one outcome, or several separated by commas
    virtual_server: str | None = None
    since: datetime | float | None = None  # inclusive
    until: datetime | float | None = None  # exclusive
    limit: int | None = 100  # the newest N matching events; None: all


@dataclass(frozen=True)
class UsageRow:
    key: str | None  # the agent/user/tool/upstream (None: events without one)
    calls: int
    errors: int
    p50_ms: float | None
    p95_ms: float | None
    cost: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_since(text: str, now: float | None = None) -> float:
    """``24h`` / ``90m`` / ``7d`` / ``30s`` / ``2w`` ago, an ISO 8601 time (UTC if no zone) or epoch seconds."""
    value = text.strip()
    match = _RELATIVE.fullmatch(value)
    if match is not None:
        delta = timedelta(**{_UNITS[match.group(2)]: float(match.group(1))})
        return (time.time() if now is None else now) - delta.total_seconds()
    try:
        return float(value)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"bad time {text!r}: use 24h, 90m, 7d, an ISO 8601 time or epoch seconds") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def epoch(value: datetime | float | None) -> float | None:
    if isinstance(value, datetime):  # naive: UTC
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()
    return None if value is None else float(value)


def event_ts(event: Event) -> float:
    """An event's time in epoch seconds (0.0 when it has none)."""
    try:
        return datetime.fromisoformat(event["time"]).timestamp()
    except (KeyError, TypeError, ValueError):
        return 0.0


def event_field(event: Event, name: str) -> Any:
    if name in ("agent", "user"):
        principal = event.get("principal")
        return principal.get(name) if isinstance(principal, dict) else None
    return event.get(name)


OUTCOMES = ("ok", "is_error", "error", "denied", "unauthenticated")


def _outcomes(flt: Filter) -> list[str]:
    return [o.strip() for o in (flt.outcome or "").split(",") if o.strip()]


def check_outcomes(text: str) -> None:
    """ValueError naming the valid outcomes when `text` (comma-separated) names another one."""
    bad = [o.strip() for o in text.split(",") if o.strip() and o.strip() not in OUTCOMES]
    if bad:
        raise ValueError(f"unknown outcome {', '.join(map(repr, bad))}: use {', '.join(OUTCOMES)} (comma-separated)")


def tool_parts(pattern: str) -> tuple[str, str] | None:
    """`upstream.tool` (each part exact or a glob) as (upstream, tool); None for an exposed name (which has no dot)."""
    upstream, dot, name = pattern.partition(".")
    return (upstream, name) if dot else None


def _glob_re(pattern: str) -> re.Pattern[str]:
    return re.compile("".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern), re.S)


def _tool_matcher(tool: str | None) -> Callable[[Event], bool]:
    """`--tool`: `upstream.tool` (as in config and `stile policy test`) or the exposed name; globs in each."""
    parts = tool_parts(tool) if tool is not None else None
    if parts is not None:
        up_ok, name_ok = _field_matcher(parts[0]), _field_matcher(parts[1])
        return lambda event: up_ok(event.get("upstream")) and name_ok(event.get("upstream_name"))
    exposed_ok = _field_matcher(tool) if tool is not None else None
    return lambda event: exposed_ok is None or exposed_ok(event.get("tool"))


def _field_matcher(pattern: str) -> Callable[[Any], bool]:
    if not _is_glob(pattern):
        return lambda value: value == pattern
    compiled = _glob_re(pattern)
    return lambda value: isinstance(value, str) and compiled.fullmatch(value) is not None


def _is_glob(pattern: str) -> bool:
    return "*" in pattern or "?" in pattern


def _matcher(flt: Filter) -> Matcher:
    since, until, outcomes = epoch(flt.since), epoch(flt.until), set(_outcomes(flt))
    exact = {k: v for k, v in (("agent", flt.agent), ("user", flt.user), ("upstream", flt.upstream),
                               ("virtual_server", flt.virtual_server)) if v is not None}
    tool_ok = _tool_matcher(flt.tool)

    def match(event: Event, ts: float) -> bool:
        if (since is not None and ts < since) or (until is not None and ts >= until):
            return False
        if outcomes and event.get("outcome") not in outcomes:
            return False
        if any(event_field(event, k) != v for k, v in exact.items()):
            return False
        return tool_ok(event)

    return match


# --------------------------------------------------------------------------------------------- JSONL


def _lines(path: Path, offset: int = 0) -> Iterator[tuple[int, Event | None]]:
    """(end offset, event) for each complete line from `offset` (None: not a JSON event); a partial last
    line is left for later."""
    with path.open("rb") as f:
        f.seek(offset)
        for raw in f:
            if not raw.endswith(b"\n"):
                return
            offset += len(raw)
            try:
                event = orjson.loads(raw)
            except orjson.JSONDecodeError:
                event = None
            yield offset, event if isinstance(event, dict) else None


def _scan(path: Path, flt: Filter, offset: int = 0) -> tuple[list[Event], int]:
    """The last `flt.limit` matching events from `offset` on, and where the last complete line ended."""
    if not path.is_file():
        raise NoTrail(f"no audit file at {path}")
    match, kept = _matcher(flt), deque[Event](maxlen=flt.limit)
    try:
        for end, event in _lines(path, offset):
            offset = end
            if event is not None and match(event, event_ts(event)):
                kept.append(event)
    except OSError as exc:
        raise QueryError(f"cannot read {path}: {exc.strerror or exc}") from exc
    return list(kept), offset


# --------------------------------------------------------------------------------------------- store


def display_url(url: str) -> str:
    """`url` with its password hidden."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ValueError, ArgumentError):
        return "(unparseable URL)"


def describe_error(url: str, exc: BaseException, doing: str = "query") -> str:
    """One line naming the store (password hidden) and the driver's own message."""
    cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    detail = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
    return f"cannot {doing} audit store {display_url(url)}: {detail}"


def check_store(url: str) -> str:
    """The async URL; a SQLite file must exist (querying must not create an empty database)."""
    try:
        target = async_url(url)
        parsed = make_url(target)
    except (ValueError, ArgumentError) as exc:
        raise QueryError(f"bad audit source {url!r}: {exc}") from exc
    if parsed.get_backend_name() == "sqlite" and not Path(parsed.database or "").is_file():
        raise NoTrail(f"no state database at {parsed.database}")
    return target


async def _with_store(url: str, work: Callable[[AsyncConnection], Awaitable[T]]) -> T | None:
    """Run `work(conn)` on a fresh connection (None when the audit table does not exist yet)."""
    engine = create_async_engine(check_store(url), poolclass=NullPool)
    try:
        async with engine.connect() as conn:
            if not await conn.run_sync(lambda c: sa.inspect(c).has_table(TABLE)):
                return None
            return await work(conn)
    except (SQLAlchemyError, OSError) as exc:
        raise QueryError(describe_error(url, exc)) from exc
    finally:
        await engine.dispose()


def _where(flt: Filter, dialect: str) -> list[sa.ColumnElement[bool]]:
    t = audit_events.c
    clauses: list[sa.ColumnElement[bool]] = []
    since, until, outcomes = epoch(flt.since), epoch(flt.until), _outcomes(flt)
    if since is not None:
        clauses.append(t.ts >= since)
    if until is not None:
        clauses.append(t.ts < until)
    for column, value in ((t.agent, flt.agent), (t.principal_user, flt.user), (t.upstream, flt.upstream),
                          (t.virtual_server, flt.virtual_server)):
        if value is not None:
            clauses.append(column == value)
    if outcomes:
        clauses.append(t.outcome.in_(outcomes))
    parts = tool_parts(flt.tool) if flt.tool is not None else None
    if parts is not None:  # upstream.tool: the upstream column and the original name inside the event
        original: sa.ColumnElement[Any] = (
            sa.func.json_extract(t.event, "$.upstream_name") if dialect == "sqlite"
            else sa.func.json_extract_path_text(sa.cast(t.event, sa.JSON), "upstream_name"))
        clauses += [_glob_clause(t.upstream, parts[0], dialect), _glob_clause(original, parts[1], dialect)]
    elif flt.tool is not None:
        clauses.append(_glob_clause(t.tool, flt.tool, dialect))
    return clauses


def _glob_clause(column: sa.ColumnElement[Any], pattern: str, dialect: str) -> sa.ColumnElement[bool]:
    if not _is_glob(pattern):
        return column == pattern
    if dialect == "sqlite":  # GLOB is case-sensitive, like the other sources
        return column.op("GLOB")(pattern.replace("[", "[[]"))
    like = "".join("%" if c == "*" else "_" if c == "?" else "\\" + c if c in "%_\\" else c for c in pattern)
    return column.like(like, escape="\\")


def _with_hash(event: Event, hash_: str) -> Event:
    """The `event` column holds the hashed body; the hash is in its own column (`audit_store.body_text`)."""
    if "hash" not in event:
        event["hash"] = hash_
    return event


async def _store_search(url: str, flt: Filter) -> list[tuple[float, str, Event]]:
    async def work(conn: AsyncConnection) -> list[tuple[float, str, Event]]:
        t = audit_events.c
        query = (sa.select(t.ts, t.id, t.event, t.hash).where(*_where(flt, conn.dialect.name))
                 .order_by(t.ts.desc(), t.chain.desc(), t.seq.desc()))
        if flt.limit is not None:
            query = query.limit(flt.limit)
        rows = (await conn.execute(query)).all()
        return [(float(r.ts), str(r.id), _with_hash(orjson.loads(r.event), r.hash)) for r in reversed(rows)]

    return await _with_store(url, work) or []


# --------------------------------------------------------------------------------------------- API


def _check_limit(flt: Filter) -> None:
    if flt.limit is not None and flt.limit < 1:
        raise ValueError("limit must be at least 1")


async def search(source: Source, flt: Filter) -> list[Event]:
    """The newest `flt.limit` events matching `flt`, oldest first."""
    _check_limit(flt)
    if isinstance(source, Path):
        events, _ = await asyncio.to_thread(_scan, source, flt)
        return events
    return [event for _, _, event in await _store_search(source, flt)]


async def tail(source: Source, flt: Filter, follow: bool = False, interval: float = 0.5) -> AsyncIterator[Event]:
    """The last `flt.limit` matching events; then, with `follow`, new ones as they are written (until cancelled).

    A file is re-read from where its last complete line ended (from the start if it shrank). The store
    is polled every `interval` seconds for events stamped from `FOLLOW_LOOKBACK` seconds before the newest
    one seen (the writer flushes in the background; replicas' clocks differ), skipping ids already seen.
    """
    _check_limit(flt)
    if isinstance(source, Path):
        events, offset = await asyncio.to_thread(_scan, source, flt)
        while True:
            for event in events:
                yield event
            if not follow:
                return
            await asyncio.sleep(interval)
            events = []
            with contextlib.suppress(OSError, QueryError):  # rotated away: wait for the file to come back
                offset = 0 if source.stat().st_size < offset else offset  # truncated or replaced
                events, offset = await asyncio.to_thread(_scan, source, replace(flt, limit=None), offset)
    rows = await _store_search(source, flt)
    for _, _, event in rows:
        yield event
    floor = epoch(flt.since) or 0.0
    high = rows[-1][0] if rows else max(time.time(), floor)
    seen = {rid: ts for ts, rid, _ in rows}
    if rows and follow:  # matching events just older than the newest shown but beyond the limit: not new
        window = replace(flt, since=max(high - FOLLOW_LOOKBACK, floor), until=high, limit=None)
        seen.update((rid, ts) for ts, rid, _ in await _store_search(source, window))
    while follow:
        await asyncio.sleep(interval)
        since = max(high - FOLLOW_LOOKBACK, floor)
        for ts, rid, event in await _store_search(source, replace(flt, since=since, limit=None)):
            if rid not in seen:
                seen[rid] = ts
                high = max(high, ts)
                yield event
        seen = {rid: ts for rid, ts in seen.items() if ts >= high - FOLLOW_LOOKBACK}


def percentile(values: list[float], pct: float) -> float | None:
    """Nearest rank: the smallest value with at least `pct`% of the values at or below it."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


def weighted_percentile(values: list[tuple[float, int]], pct: float) -> float | None:
    """`percentile` over (value, how many times) pairs."""
    total = sum(n for _, n in values)
    if not total:
        return None
    rank, seen = max(1, math.ceil(pct / 100 * total)), 0
    for value, n in sorted(values):
        seen += n
        if seen >= rank:
            return value
    return None  # unreachable: seen reaches total


def _summarise(rows: list[UsageItem], pruned: dict[str | None, Tally] | None = None) -> list[UsageRow]:
    """Per key: the events' calls, errors, percentiles and cost, plus the rollup of pruned events (`pruned`)."""
    groups: dict[str | None, list[tuple[str, float | None, float | None]]] = {}
    for key, outcome, latency, cost in rows:
        groups.setdefault(key, []).append((outcome, latency, cost))
    pruned = pruned or {}
    out = []
    for key in {*groups, *pruned}:
        items = groups.get(key, [])
        rolled = pruned.get(key, Tally())
        latencies = [(lat, 1) for _, lat, _ in items if lat is not None]
        latencies += [(bucket_value(b), n) for b, n in rolled.latency.items()]
        out.append(UsageRow(key=key, calls=len(items) + rolled.calls,
                            errors=sum(o != "ok" for o, _, _ in items) + rolled.errors,
                            p50_ms=weighted_percentile(latencies, 50), p95_ms=weighted_percentile(latencies, 95),
                            cost=round(sum(c or 0.0 for _, _, c in items) + rolled.cost, 6)))
    return sorted(out, key=lambda r: (-r.calls, r.key is None, r.key or ""))


async def usage(source: Source, by: GroupBy, since: datetime | float | None = None,
                until: datetime | float | None = None) -> list[UsageRow]:
    """Per `by` value: calls, errors (outcome != "ok"), p50/p95 latency_ms and cost; most calls first."""
    if by not in GROUP_BY:
        raise ValueError(f"cannot group by {by!r} (use one of {', '.join(GROUP_BY)})")
    flt = Filter(since=since, until=until, limit=None)
    if isinstance(source, Path):
        def rows_from_file() -> list[UsageItem]:
            events, _ = _scan(source, flt)
            return [(event_field(e, by), str(e.get("outcome")), e.get("latency_ms"), e.get("cost")) for e in events]

        return _summarise(await asyncio.to_thread(rows_from_file))

    async def work(conn: AsyncConnection) -> list[UsageRow]:
        t = audit_events.c
        query = sa.select(_COLUMNS[by], t.outcome, t.latency_ms, t.cost).where(*_where(flt, conn.dialect.name))
        rows: list[UsageItem] = [(r[0], r[1], r[2], r[3]) for r in (await conn.execute(query)).all()]
        return _summarise(rows, await rollup.read(conn, by, epoch(since), epoch(until)))

    return await _with_store(source, work) or []
