"""The audit trail: one event per MCP request (and per refused authentication), to every sink.

The request path only captures small values and a timestamp (`record`) into a bounded queue;
the writer task builds the events (sizes, costs) and hands each batch to every
sink. Each sink keeps its own hash chain (`audit_chain`) and is wrapped in a spool, so an outage of
one sink delays its events without losing them (`spool.py`).

Crash safety: `record` stages the record for the write-ahead log (`audit_wal`); one `os.write` per loop
tick appends every record staged in it before any reply of that tick is written (`stile.barrier`); the
writer checkpoints it once every sink (or its spool) has the batch, and a restart replays what a killed
process left. With `durability: fsync` the Observe policy also waits (`durable`) for a group-commit fsync
covering it.

Queue policy: the queue holds `audit.queue_size` requests. When it is full the request is not slowed
down; the event is counted in `stile_audit_dropped_total` and logged (once a minute), never dropped
silently. Shutdown drains the queue through every sink before the process exits.

Arguments are recorded per virtual server (`audit_arguments`, default `audit.arguments`): `none`,
`digest` (SHA-256 of their canonical JSON), `redacted` (values of secret-looking keys and known secret
formats masked, and inside other strings what the redact policy's detectors find, structure kept) or `full`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import logging
import os
import re
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from stile.config.observe import ArgumentsMode, Durability
from stile.core.catalog import matches
from stile.core.context import CallContext, Principal
from stile.observe.audit_sinks import Event, Sink, SinkError
from stile.observe.audit_tail import write_heads
from stile.observe.audit_wal import GroupCommit, Wal
from stile.policies.detectors import BUILTIN_NAMES, scanner
from stile.tasks import spawn
from stile.wire.forwarded import ClientAddress

log = logging.getLogger("stile.audit")
BATCH = 1024
LINGER = 0.01  # seconds the writer waits after an event for more to batch (one transaction per batch)
MASK = "***"
_SECRET_KEY = re.compile(r"pass(word)?|secret|token|api[_-]?key|auth|credential|private[_-]?key|session", re.I)
_SECRET_VALUE = re.compile(
    r"^(eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"  # JWT
    r"|stile_[A-Za-z0-9_-]{20,}"  # Stile API key
    r"|AKIA[0-9A-Z]{16}"  # AWS access key id
    r"|gh[pousr]_[A-Za-z0-9]{30,}"  # GitHub token
    r"|xox[abpr]-[A-Za-z0-9-]{10,}"  # Slack token
    r"|sk-[A-Za-z0-9_-]{20,})$"  # OpenAI-style key
)
_DETECTORS = scanner(BUILTIN_NAMES)  # the redact policy's detectors, for values inside strings
_NAME_KEY = {"tools/call": "name", "prompts/get": "name"}
_EXECUTED = frozenset({"ok", "is_error"})  # outcomes of calls the upstream ran: the ones that cost


def redact(value: Any, depth: int = 0) -> Any:
    if depth > 32:
        return MASK
    if isinstance(value, dict):
        return {k: MASK if isinstance(k, str) and _SECRET_KEY.search(k) else redact(v, depth + 1)
                for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v, depth + 1) for v in value]
    if isinstance(value, str):
        return MASK if _SECRET_VALUE.match(value) else _DETECTORS.mask(value)[0]
    return value


def arguments_for(mode: ArgumentsMode, args: Any) -> Any:
    if mode == "none" or args is None:
        return None
    if mode == "digest":
        return "sha256:" + hashlib.sha256(orjson.dumps(args, option=orjson.OPT_SORT_KEYS)).hexdigest()
    if mode == "redacted":
        return redact(args)
    return args


class CostTable:
    """Cost units per call of `upstream.tool` from `costs`: an exact name, else the longest matching glob; else 1."""

    def __init__(self, costs: Mapping[str, float]) -> None:
        self.exact = {k: v for k, v in costs.items() if "*" not in k and "?" not in k}
        self.globs = sorted(((k, v) for k, v in costs.items() if k not in self.exact), key=lambda kv: -len(kv[0]))
        self._cache: dict[str, float] = {}

    def __call__(self, ref: str) -> float:
        cost = self._cache.get(ref)
        if cost is None:
            cost = self.exact.get(ref)
            if cost is None:
                cost = next((units for pattern, units in self.globs if matches(ref, [pattern])), 1.0)
            if len(self._cache) < 10_000:
                self._cache[ref] = cost
        return cost


class Outcome:
    """What a request ended as (captured on the request path, turned into an event by the writer)."""

    __slots__ = ("bytes_out", "cache_hit", "code", "error_type", "outcome", "reason", "seconds", "tool", "upstream",
                 "upstream_name")

    def __init__(self, outcome: str, seconds: float, *, tool: str = "", upstream: str = "", upstream_name: str = "",
                 code: int | None = None, error_type: str | None = None, reason: str | None = None,
                 bytes_out: int = 0, cache_hit: bool = False) -> None:
        self.outcome = outcome
        self.cache_hit = cache_hit
        self.seconds = seconds
        self.tool = tool
        self.upstream = upstream
        self.upstream_name = upstream_name
        self.code = code
        self.error_type = error_type
        self.reason = reason
        self.bytes_out = bytes_out


# What the request path hands the writer: (event id, time, what the request was, how it ended, extra
# fields). Only small JSON values: holding a request's context or reply until the writer runs cost ~20 µs a
# request (measured: a working set that no longer fits the caches), building these ~1-2 µs. The same
# tuple, as one JSON array, is the write-ahead log's record (a replay reads it back as lists).
# request: request_id, trace_id, virtual_server, method, era, agent, user, roles, auth, arguments,
# bytes_in, upstream_seconds, uri. outcome: outcome, seconds, tool, upstream, upstream_name, code,
# error_type, reason, bytes_out, cache_hit (absent in records written before the response cache).
_Request = Sequence[Any]
_Outcome = Sequence[Any]
_Record = tuple[str, float, _Request | None, _Outcome, dict[str, Any] | None]
_Item = tuple[_Record, int]  # and the WAL position after it (0 without a WAL)


def _values(o: Outcome) -> _Outcome:
    return (o.outcome, o.seconds, o.tool, o.upstream, o.upstream_name, o.code, o.error_type, o.reason, o.bytes_out,
            o.cache_hit)


class AuditLog:
    def __init__(self, sinks: Sequence[Sink], *, arguments: ArgumentsMode = "redacted",
                 per_server: Mapping[str, ArgumentsMode] | None = None, costs: Mapping[str, float] | None = None,
                 queue_size: int = 10_000, client_address: ClientAddress | None = None,
                 wal_dir: Path | None = None, durability: Durability = "process",
                 wal_adopt: tuple[Path, ...] = ()) -> None:
        self.sinks = list(sinks)
        self.client_address = client_address or ClientAddress()
        self.arguments = arguments
        self.per_server = dict(per_server or {})
        self.cost = CostTable(costs or {})
        self.queue_size = queue_size
        self.dropped = 0
        self.written = 0
        self.sink_errors: dict[str, int] = {s.name: 0 for s in self.sinks}
        self._queue: asyncio.Queue[_Item | None] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._ids = itertools.count(1)
        self._boot = os.urandom(6).hex()
        self._last_drop_log = 0.0
        self._closing = False
        self._sec, self._sec_text = -1, ""
        self.wal = Wal(wal_dir, self._boot, wal_adopt) if wal_dir is not None and self.sinks else None
        if self.wal is not None:
            self.wal.on_error = self._wal_failed  # a failed write of a tick's staged records
        self.commit = GroupCommit(self.wal, self.checkpoint) if self.wal is not None and durability == "fsync" else None
        self.wal_errors = 0
        self.replayed = 0
        self._delivered = 0  # WAL position every sink has
        self._heads: dict[str, Any] = {}
        self._last_wal_log = 0.0

    @property
    def enabled(self) -> bool:
        return bool(self.sinks)

    @property
    def depth(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    def preflight(self) -> None:
        """Before serving: `WalError` (a clear message) if the write-ahead log directory is unusable."""
        if self.wal is not None:
            self.wal.preflight()

    async def start(self) -> None:
        if not self.enabled:
            return
        for sink in self.sinks:
            await sink.start()
        if self.wal is not None:
            await self._replay(await asyncio.to_thread(self.wal.open))
        if self.commit is not None:
            self.commit.start()
        self._queue = asyncio.Queue(self.queue_size)
        self._writer = spawn(self._write_loop(), name="audit-writer")

    async def _replay(self, lines: list[bytes]) -> None:
        """Write what killed processes had acknowledged (their WAL records) to every sink, oldest first."""
        assert self.wal is not None
        if lines:
            log.warning("audit: replaying %d acknowledged events a process that died left in %s", len(lines),
                        self.wal.directory)
        for i in range(0, len(lines), BATCH):
            events = []
            for line in lines[i:i + BATCH]:
                try:
                    eid, at, request, outcome, extra = orjson.loads(line)
                    events.append(self.build(eid, at, request, outcome, extra))
                except (orjson.JSONDecodeError, TypeError, ValueError):
                    log.error("audit write-ahead log: unreadable record skipped: %.200r", line)
            await self._to_sinks(events)
            self.replayed += len(events)
        await self._save_heads()
        await asyncio.to_thread(self.wal.discard_recovered)

    @property
    def fsync(self) -> bool:
        """Whether replies wait for `durable()` (audit.durability: fsync)."""
        return self.commit is not None

    async def durable(self) -> None:
        """fsync mode: return once an fsync covers every record appended so far (group commit)."""
        if self.commit is not None and self.wal is not None:
            await self.commit.wait(self.wal.position)

    # --- the request path -------------------------------------------------------------------
    def record(self, ctx: CallContext, outcome: Outcome) -> None:
        method = ctx.method
        params = ctx.params
        args = (arguments_for(self.per_server.get(ctx.virtual_server, self.arguments), params.get("arguments"))
                if method in _NAME_KEY else None)
        uri = params.get("uri")
        p = ctx.principal
        request = (ctx.request_id, ctx.stats.trace_id, ctx.virtual_server, method, ctx.era, p.agent, p.user,
                   p.roles, p.method, args, len(orjson.dumps(params)), ctx.stats.upstream_seconds,
                   uri if isinstance(uri, str) else None)
        identity = ctx.stats.identity  # which identity the upstream call used (never the token)
        self._put((f"{self._boot}-{next(self._ids)}", time.time(), request, _values(outcome),
                   {"identity": identity} if identity is not None else None))

    def record_http(self, virtual_server: str, headers: Mapping[str, str], outcome: str, reason: str,
                    method: str | None = None, principal: Principal | None = None,
                    error_type: str | None = None, code: int | None = None) -> None:
        """An HTTP request answered outside the pipeline: refused authentication or scope, a request the
        transport rejected (bad JSON, unknown session, mismatched headers), or an admin query. The client
        address is the TCP peer, or the forwarded client when the peer is a trusted proxy (`wire.forwarded`)."""
        extra: dict[str, Any] = {"virtual_server": virtual_server, "method": method or headers.get("mcp-method"),
                                 "tool": headers.get("mcp-name"), "client_address": self.client_address(headers)}
        if principal is not None:
            extra["principal"] = {"agent": principal.agent, "user": principal.user, "roles": list(principal.roles),
                                  "auth": principal.method}
        self._put((f"{self._boot}-{next(self._ids)}", time.time(), None,
                   (outcome, 0.0, "", "", "", code, error_type, reason, 0), extra))

    def record_event(self, method: str, outcome: str, reason: str, *, upstream: str = "", name: str = "",
                     tool: str | None = None, extra: Mapping[str, Any] | None = None) -> None:
        """A gateway event that is no request (`method` names it, e.g. `pins/changed`): a tool definition
        changed under its pin, a lookalike tool appeared. Recorded under virtual server `(governance)`."""
        fields: dict[str, Any] = {"virtual_server": "(governance)", "method": method, "tool": tool, **(extra or {})}
        self._put((f"{self._boot}-{next(self._ids)}", time.time(), None,
                   (outcome, 0.0, "", upstream, name, None, None, reason, 0), fields))

    def _put(self, record: _Record) -> None:
        queue = self._queue
        if queue is None or self._closing:
            return
        if queue.full():
            self.dropped += 1
            now = time.monotonic()
            if now - self._last_drop_log > 60:
                self._last_drop_log = now
                log.error("audit queue full (%d): events are being dropped (%d so far)", self.queue_size, self.dropped)
            return
        wal = self.wal
        position = 0
        if wal is not None:
            try:
                position = wal.stage(orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE))
            except (OSError, TypeError) as exc:  # TypeError: orjson.JSONEncodeError
                position = wal.position  # not in the WAL: only the queue holds it
                self._wal_failed(exc)
        queue.put_nowait((record, position))

    def _wal_failed(self, exc: Exception) -> None:
        self.wal_errors += 1
        now = time.monotonic()
        if now - self._last_wal_log > 60:
            self._last_wal_log = now
            log.error("audit write-ahead log: %s (%d errors so far, stile_audit_wal_errors_total)", exc,
                      self.wal_errors)

    # --- the writer -------------------------------------------------------------------------
    def _time(self, at: float) -> str:
        """ISO 8601 UTC with microseconds; the date part is formatted once per second."""
        sec = int(at)
        if sec != self._sec:
            self._sec, self._sec_text = sec, datetime.fromtimestamp(sec, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        return f"{self._sec_text}.{int((at - sec) * 1e6):06d}+00:00"

    def build(self, eid: str, at: float, request: _Request | None, o: _Outcome,
              extra: dict[str, Any] | None) -> Event:
        outcome, seconds, tool, upstream_ref, upstream_name, code, error_type, reason, bytes_out = o[:9]
        cache_hit = len(o) > 9 and o[9] is True
        upstream = upstream_ref or None
        common = {
            "upstream": upstream, "upstream_name": upstream_name or None,
            "outcome": outcome, "error_code": code, "error_type": error_type, "reason": reason,
            "latency_ms": round(seconds * 1000, 3), "bytes_out": bytes_out,
            "cache_hit": cache_hit,  # answered by the response cache (policies.cache): the upstream did not run
        }
        if request is None:
            return {"id": eid, "time": self._time(at), "request_id": None,
                    "trace_id": None, "principal": {"agent": None, "user": None, "roles": [], "auth": "none"},
                    **(extra or {}), **common, "cost": 0.0}
        (request_id, trace_id, vs, method, era, agent, user, roles, auth, args, bytes_in, upstream_seconds,
         uri) = request
        named = method in _NAME_KEY
        executed = upstream is not None and outcome in _EXECUTED and method == "tools/call" and not cache_hit
        event: Event = {
            "id": eid, "time": self._time(at), "request_id": request_id,
            "trace_id": trace_id, "virtual_server": vs, "method": method, "era": era,
            "principal": {"agent": agent, "user": user, "roles": list(roles), "auth": auth},
            "arguments": args, "bytes_in": bytes_in, "upstream_ms": round(upstream_seconds * 1000, 3),
            **common,
            "cost": self.cost(f"{upstream}.{upstream_name}") if executed else 0.0,
        }
        if named:
            event["tool"] = tool or None
        elif uri is not None:
            event["uri"] = uri
        if extra:
            event.update(extra)
        return event

    async def _write_loop(self) -> None:
        """Write batches until the shutdown sentinel (None) arrives; never cancelled mid-batch."""
        assert self._queue is not None
        while True:
            item = await self._queue.get()
            if item is not None and self._queue.qsize() < BATCH:
                await asyncio.sleep(LINGER)  # gather a batch: per-transaction costs dominate small writes
            batch: list[_Item] = []
            while item is not None:
                batch.append(item)
                if len(batch) >= BATCH or self._queue.empty():
                    break
                item = self._queue.get_nowait()
            if batch:
                await self._write(batch)
            if item is None:
                return

    async def _write(self, batch: list[_Item]) -> None:
        await self._to_sinks([self.build(*record) for record, _ in batch])
        self._delivered = batch[-1][1]
        self.checkpoint()
        await self._save_heads()

    async def _save_heads(self) -> None:
        """Record where each sink's chain ends (`heads.json`), so verify can tell a missing tail.

        In a thread: a file write and a rename can block for milliseconds on a busy disk (under the bench,
        py-spy found the event loop inside `write_heads` for up to 40 % of its samples); the writer waits
        for it before its next batch, the requests do not."""
        if self.wal is None:
            return
        heads = {}
        for sink in self.sinks:
            head = getattr(getattr(sink, "inner", sink), "head", None)
            value = head() if callable(head) else None
            if isinstance(value, dict):
                heads[sink.name] = value
        if heads and heads != self._heads:
            try:
                await asyncio.to_thread(write_heads, self.wal.directory, heads)
                self._heads = heads
            except OSError as exc:
                self._wal_failed(exc)

    async def _to_sinks(self, events: list[Event]) -> None:
        for sink in self.sinks:
            try:
                await sink.write(events)
            except SinkError as exc:  # its spool failed too (a dead local disk): counted, not retried
                self.sink_errors[sink.name] += 1
                log.error("audit sink %s: %s (%d events not written)", sink.name, exc, len(events))
        self.written += len(events)

    def checkpoint(self) -> None:
        """Drop the WAL records every sink has (in fsync mode, only those an fsync covers as well)."""
        wal = self.wal
        if wal is None:
            return
        upto = min(self._delivered, wal.synced) if self.commit is not None else self._delivered
        try:
            wal.checkpoint(upto)
        except OSError as exc:  # the records stay; a restart would replay them (the sinks skip known ids)
            self._wal_failed(exc)

    async def aclose(self) -> None:
        """Write everything queued through every sink, then close the sinks."""
        if self._queue is not None and self._writer is not None and not self._closing:
            self._closing = True
            await self._queue.put(None)  # behind every queued event; waits while the writer drains a full queue
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
        if self.commit is not None:
            await self.commit.aclose()
        for sink in self.sinks:
            await sink.aclose()
        if self.wal is not None and self._writer is not None and self._writer.done() and not self._writer.cancelled():
            self.wal.close()  # every record was delivered (or spooled)
