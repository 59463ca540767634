"""W3C trace context through the gateway (and OpenTelemetry spans when `tracing.enabled`).

Every request gets a trace context: the client's `traceparent`/`tracestate` (HTTP headers, or `_meta`
for requests that carry it there) or a fresh one. Stile's own hop gets a new span id, and the upstream
request carries Stile's `traceparent` (HTTP header, plus `_meta` for 2026-07-28 upstreams), so the
upstream's spans hang under Stile's and share the client's trace id.
"""

from __future__ import annotations

import os
import re
from typing import Any

from stile.config.observe import TracingConfig
from stile.core.context import CallContext

_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16


def parse_traceparent(value: Any) -> tuple[str, str, str] | None:
    """(trace id, parent span id, flags) of a valid version-00-compatible traceparent, else None."""
    if not isinstance(value, str):
        return None
    m = _TRACEPARENT.match(value.strip())
    if m is None or m.group(1) == "ff" or m.group(2) == _ZERO_TRACE or m.group(3) == _ZERO_SPAN:
        return None
    return m.group(2), m.group(3), m.group(4)


def incoming(ctx: CallContext) -> tuple[str | None, str | None]:
    """The client's traceparent and tracestate: HTTP headers first, then `params._meta`."""
    tp = ctx.headers.get("traceparent")
    ts = ctx.headers.get("tracestate")
    if tp is None:
        meta = ctx.params.get("_meta")
        if isinstance(meta, dict):
            tp, ts = meta.get("traceparent"), meta.get("tracestate")
    return (tp if isinstance(tp, str) else None), (ts if isinstance(ts, str) else None)


class Tracing:
    def __init__(self, cfg: TracingConfig) -> None:
        self.cfg = cfg

    def begin(self, ctx: CallContext) -> None:
        """Give the request its trace context (continuing the client's when it sent a valid one)."""
        tp, ts = incoming(ctx)
        parsed = parse_traceparent(tp)
        stats = ctx.stats
        if parsed is None:
            trace_id, flags = os.urandom(16).hex(), "01"
            ts = None
        else:
            trace_id, _, flags = parsed
        stats.trace_id = trace_id
        stats.traceparent = f"00-{trace_id}-{os.urandom(8).hex()}-{flags}"
        stats.tracestate = ts if isinstance(ts, str) and len(ts) <= 512 else None

    def end(self, ctx: CallContext, outcome: str, error_type: str | None = None) -> None:
        return None

    @staticmethod
    def upstream_headers(ctx: CallContext) -> dict[str, str]:
        """Stile's trace context for the upstream request (transports add `_meta` where the era calls for it)."""
        tp = ctx.stats.traceparent
        if tp is None:
            return {}
        if ctx.stats.tracestate:
            return {"traceparent": tp, "tracestate": ctx.stats.tracestate}
        return {"traceparent": tp}
