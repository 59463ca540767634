"""The audit trail: one event per MCP request (and per refused authentication), to every sink.

The request path only captures references and a timestamp (`record`, ~1 µs) into a bounded queue;
the writer task builds the events (argument redaction, sizes, costs) and hands each batch to every
sink. Each sink keeps its own hash chain (`audit_chain`) and is wrapped in a spool, so an outage of
one sink delays its events without losing them (`spool.py`).

Queue policy: the queue holds `audit.queue_size` requests. When it is full the request is not slowed
down; the event is counted in `stile_audit_dropped_total` and logged (once a minute), never dropped
silently. Shutdown drains the queue through every sink before the process exits.

Arguments are recorded per virtual server (`audit_arguments`, default `audit.arguments`): `none`,
`digest` (SHA-256 of their canonical JSON), `redacted` (values of secret-looking keys and known secret
formats masked, structure kept) or `full`.
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
from typing import Any

import orjson

from stile.config.observe import ArgumentsMode
from stile.core.catalog import matches
from stile.core.context import CallContext, Principal
from stile.observe.audit_sinks import Event, Sink, SinkError
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
    if isinstance(value, str) and _SECRET_VALUE.match(value):
        return MASK
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

    __slots__ = ("bytes_out", "code", "error_type", "outcome", "reason", "seconds", "tool", "upstream",
                 "upstream_name")

    def __init__(self, outcome: str, seconds: float, *, tool: str = "", upstream: str = "", upstream_name: str = "",
                 code: int | None = None, error_type: str | None = None, reason: str | None = None,
                 bytes_out: int = 0) -> None:
        self.outcome = outcome
        self.seconds = seconds
        self.tool = tool
        self.upstream = upstream
        self.upstream_name = upstream_name
        self.code = code
        self.error_type = error_type
        self.reason = reason
        self.bytes_out = bytes_out


# What the request path hands the writer: (time, what the request was, how it ended, extra fields). Only
# small values: holding a request's context or reply until the writer runs cost ~20 µs a request (measured:
# a working set that no longer fits the caches), building these ~1-2 µs.
_Request = tuple[Any, str | None, str, str, str, Principal, Any, int, float, str | None]
_Item = tuple[float, _Request | None, Outcome, dict[str, Any] | None]


class AuditLog:
    def __init__(self, sinks: Sequence[Sink], *, arguments: ArgumentsMode = "redacted",
                 per_server: Mapping[str, ArgumentsMode] | None = None, costs: Mapping[str, float] | None = None,
                 queue_size: int = 10_000, client_address: ClientAddress | None = None) -> None:
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

    @property
    def enabled(self) -> bool:
        return bool(self.sinks)

    @property
    def depth(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    async def start(self) -> None:
        if not self.enabled:
            return
        for sink in self.sinks:
            await sink.start()
        self._queue = asyncio.Queue(self.queue_size)
        self._writer = spawn(self._write_loop(), name="audit-writer")

    # --- the request path -------------------------------------------------------------------
    def record(self, ctx: CallContext, outcome: Outcome) -> None:
        method = ctx.method
        params = ctx.params
        args = (arguments_for(self.per_server.get(ctx.virtual_server, self.arguments), params.get("arguments"))
                if method in _NAME_KEY else None)
        uri = params.get("uri")
        request = (ctx.request_id, ctx.stats.trace_id, ctx.virtual_server, method, ctx.era, ctx.principal, args,
                   len(orjson.dumps(params)), ctx.stats.upstream_seconds, uri if isinstance(uri, str) else None)
        self._put((time.time(), request, outcome, None))

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
        self._put((time.time(), None, Outcome(outcome, 0.0, reason=reason, error_type=error_type, code=code), extra))

    def _put(self, item: _Item) -> None:
        if self._queue is None or self._closing:
            return
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            self.dropped += 1
            now = time.monotonic()
            if now - self._last_drop_log > 60:
                self._last_drop_log = now
                log.error("audit queue full (%d): events are being dropped (%d so far)", self.queue_size, self.dropped)

    # --- the writer -------------------------------------------------------------------------
    def _time(self, at: float) -> str:
        """ISO 8601 UTC with microseconds; the date part is formatted once per second."""
        sec = int(at)
        if sec != self._sec:
            self._sec, self._sec_text = sec, datetime.fromtimestamp(sec, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        return f"{self._sec_text}.{int((at - sec) * 1e6):06d}+00:00"

    def build(self, at: float, request: _Request | None, o: Outcome, extra: dict[str, Any] | None) -> Event:
        upstream = o.upstream or None
        common = {
            "upstream": upstream, "upstream_name": o.upstream_name or None,
            "outcome": o.outcome, "error_code": o.code, "error_type": o.error_type, "reason": o.reason,
            "latency_ms": round(o.seconds * 1000, 3), "bytes_out": o.bytes_out,
            "cache_hit": False,  # no response cache yet: recorded so consumers need not change when one lands
        }
        if request is None:
            return {"id": f"{self._boot}-{next(self._ids)}", "time": self._time(at), "request_id": None,
                    "trace_id": None, "principal": {"agent": None, "user": None, "roles": [], "auth": "none"},
                    **(extra or {}), **common, "cost": 0.0}
        request_id, trace_id, vs, method, era, p, args, bytes_in, upstream_seconds, uri = request
        named = method in _NAME_KEY
        executed = upstream is not None and o.outcome in _EXECUTED and method == "tools/call"
        event: Event = {
            "id": f"{self._boot}-{next(self._ids)}", "time": self._time(at), "request_id": request_id,
            "trace_id": trace_id, "virtual_server": vs, "method": method, "era": era,
            "principal": {"agent": p.agent, "user": p.user, "roles": list(p.roles), "auth": p.method},
            "arguments": args, "bytes_in": bytes_in, "upstream_ms": round(upstream_seconds * 1000, 3),
            **common,
            "cost": self.cost(f"{upstream}.{o.upstream_name}") if executed else 0.0,
        }
        if named:
            event["tool"] = o.tool or None
        elif uri is not None:
            event["uri"] = uri
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
        events = [self.build(*item) for item in batch]
        for sink in self.sinks:
            try:
                await sink.write(events)
            except SinkError as exc:
                self.sink_errors[sink.name] += 1
                log.error("audit sink %s: %s (%d events not written)", sink.name, exc, len(events))
        self.written += len(events)

    async def aclose(self) -> None:
        """Write everything queued through every sink, then close the sinks."""
        if self._queue is not None and self._writer is not None and not self._closing:
            self._closing = True
            await self._queue.put(None)  # behind every queued event; waits while the writer drains a full queue
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
        for sink in self.sinks:
            await sink.aclose()
