"""The first policy: gives each request its trace context, times it, and reports how it ended.

It sees every outcome (denials included, since it runs before access control) and feeds the three
observers from one measurement: Prometheus counters, the audit trail and the trace span.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import orjson

from stile.core.context import CallContext, CallNext, Reply
from stile.observe.audit import AuditLog, Outcome
from stile.observe.metrics import Metrics
from stile.observe.tracing import Tracing
from stile.wire.errors import StileError

if TYPE_CHECKING:
    from stile.core.catalog import Target, ViewSource

DENIALS = frozenset({"PolicyDenied", "Forbidden", "RateLimited", "TooManyRequests", "QuotaExceeded", "ScreenBlocked",
                     "FlowDenied"})
_INDEX = {"tools/call": "tool_index", "prompts/get": "prompt_index"}
_BY_URI = frozenset({"resources/read", "resources/subscribe", "resources/unsubscribe"})


def outcome_of(exc: StileError) -> tuple[str, str | None]:
    """(outcome, reason) for a request that ended in a gateway error."""
    name = type(exc).__name__
    if name in DENIALS:
        rule = exc.data.get("rule") if isinstance(exc.data, dict) else None
        return "denied", f"{rule}: {exc.message}" if rule else exc.message
    return "error", exc.message


class Observe:
    def __init__(self, views: ViewSource, metrics: Metrics, audit: AuditLog, tracing: Tracing,
                 anonymous: frozenset[str] = frozenset()) -> None:
        self.views = views
        self.metrics = metrics
        self.audit = audit
        self.tracing = tracing
        self._anonymous = anonymous  # virtual servers with auth: none (their full view is the caller's)

    def _target(self, ctx: CallContext) -> tuple[str, str, Target | None]:
        """(metrics label, audit name, target) of a named request (`tools/call`, `prompts/get`).

        The label is the exposed name when the *caller* can see it, else `(unknown)`: a name its roles
        hide looks exactly like one that does not exist. Observe runs before access control, so the
        caller's narrowed view comes back in `ctx.stats.view`; a virtual server with authentication and
        no narrowed view (refused before narrowing) shows the caller nothing. The audit trail, read by
        admins, names what was tried: the exposed name and target in the virtual server's full view."""
        index_name = _INDEX.get(ctx.method)
        if index_name is None:
            return "", "", None
        name = ctx.params.get("name")
        if not isinstance(name, str):
            return "(unknown)", "(unknown)", None
        view = ctx.view or ctx.stats.view
        if view is None and ctx.virtual_server in self._anonymous:
            view = self.views.view(ctx.virtual_server)
        target = getattr(view, index_name).get(name) if view is not None else None
        if target is not None:
            return name, name, target
        full = self.views.view(ctx.virtual_server)  # the rare path: unknown, or hidden from this caller
        target = getattr(full, index_name).get(name) if full is not None else None
        return "(unknown)", (name if target is not None else "(unknown)"), target

    def _resource_upstream(self, ctx: CallContext) -> str:
        uri = ctx.params.get("uri") if ctx.method in _BY_URI else None
        view = self.views.view(ctx.virtual_server) if isinstance(uri, str) else None
        hit = view.resolve_uri(uri) if view is not None and isinstance(uri, str) else None
        return hit[0] if hit is not None else ""

    async def __call__(self, ctx: CallContext, call_next: CallNext) -> Reply:
        self.tracing.begin(ctx)
        start = time.perf_counter()
        try:
            reply = await call_next(ctx)
        except StileError as exc:
            exc.recorded = True  # the frontend must not record it a second time as a transport rejection
            outcome, reason = outcome_of(exc)
            self._finish(ctx, time.perf_counter() - start, outcome, exc.jsonrpc_code, type(exc).__name__, reason, None)
            if self.audit.fsync:
                await self.audit.durable()
            raise
        except asyncio.CancelledError:  # the client went away or cancelled: still accounted for
            self._finish(ctx, time.perf_counter() - start, "cancelled", None, "CancelledError",
                         "cancelled by the client", None)
            raise
        if "error" in reply:
            err = reply["error"]
            code = err.get("code") if isinstance(err, dict) else None
            msg = err.get("message") if isinstance(err, dict) else None
            self._finish(ctx, time.perf_counter() - start, "error", code, "upstream", msg, reply)
        else:
            result = reply.get("result")
            outcome = "is_error" if isinstance(result, dict) and result.get("isError") is True else "ok"
            self._finish(ctx, time.perf_counter() - start, outcome, None, None, None, reply)
        if self.audit.fsync:  # audit.durability: fsync — the reply waits for the group commit covering its event
            await self.audit.durable()
        return reply

    def _finish(self, ctx: CallContext, seconds: float, outcome: str, code: int | None, error_type: str | None,
                reason: str | None, reply: Reply | None) -> None:
        label, tool, target = self._target(ctx)
        upstream = target.upstream if target is not None else self._resource_upstream(ctx)
        self.metrics.observe(ctx.virtual_server, ctx.method, label, "" if label == "(unknown)" else upstream,
                             outcome, seconds, ctx.stats.upstream_seconds)
        if outcome == "denied":
            self.metrics.denial(ctx.virtual_server, error_type or "denied")
        cache = ctx.stats.cache
        if cache is not None:
            self.metrics.cache(ctx.virtual_server, cache)
        self.tracing.end(ctx, outcome, error_type, code, reason, upstream)
        if self.audit.enabled:
            self.audit.record(ctx, Outcome(outcome, seconds, tool=tool, upstream=upstream,
                                           upstream_name=target.original if target is not None else "",
                                           code=code, error_type=error_type, reason=reason,
                                           bytes_out=len(orjson.dumps(reply)) if reply is not None else 0,
                                           cache_hit=cache == "hit"))
