"""Prometheus metrics: requests, latency (total and upstream) and upstream health, per registry.

The `Metrics` policy sits first in the pipeline so it sees every outcome, denials included. Label
values come from the gateway's own vocabulary (virtual server, method, exposed tool, upstream), never
from free client input: an unknown tool name is recorded as `(unknown)` so a client cannot blow up
the series count. The hot path only bumps plain integers (one event loop, no locks); the Prometheus
families are built at scrape time. prometheus_client's own Counter/Histogram children cost ~10 µs a
call here (locks, per-observation bucket scan), this ~1 µs.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from stile.core.context import CallContext, CallNext, Reply
from stile.observe.audit import AuditLog
from stile.wire.errors import StileError

if TYPE_CHECKING:
    from collections.abc import Iterator

    from stile.core.gateway import Gateway

BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_NAMED = {"tools/call": "name", "prompts/get": "name"}


class _UpstreamCollector:
    def __init__(self, gw: Gateway) -> None:
        self.gw = gw

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily("stile_upstream_up", "1 when the upstream is reachable and discovered",
                               labels=["upstream", "era"])
        for name, upstream in self.gw.upstreams.items():
            ready = upstream.healthy and self.gw.inventories[name].ok
            up.add_metric([name, upstream.era or "unknown"], 1.0 if ready else 0.0)
        yield up


class _Hist:
    __slots__ = ("buckets", "count", "sum")

    def __init__(self) -> None:
        self.buckets = [0] * (len(BUCKETS) + 1)
        self.count = 0
        self.sum = 0.0


class _RequestCollector:
    def __init__(self, metrics: Metrics) -> None:
        self.m = metrics

    def collect(self) -> Iterator[Any]:
        req = CounterMetricFamily("stile_requests", "MCP requests by outcome",
                                  labels=["virtual_server", "method", "tool", "upstream", "outcome"])
        for key, n in list(self.m.counts.items()):
            req.add_metric(list(key), n)
        yield req
        hist = HistogramMetricFamily("stile_request_seconds", "time from request to answer, gateway included",
                                     labels=["virtual_server", "method"])
        for key, h in list(self.m.hists.items()):
            cumulative, acc = [], 0
            for bound, n in zip((*BUCKETS, float("inf")), h.buckets, strict=True):
                acc += n
                cumulative.append(('+Inf' if bound == float('inf') else repr(bound), acc))
            hist.add_metric(list(key), cumulative, h.sum)
        yield hist
        denied = CounterMetricFamily("stile_denials", "requests denied by policy", labels=["virtual_server", "reason"])
        for key, n in list(self.m.denied.items()):
            denied.add_metric(list(key), n)
        yield denied
        yield GaugeMetricFamily("stile_listen_streams", "open notification streams (legacy GET, listen)",
                                value=float(self.m.gw.hub.count()))
        audit = self.m.audit
        if audit is not None and audit.enabled:
            yield GaugeMetricFamily("stile_audit_queue_depth", "audit events waiting to be written",
                                    value=float(audit.depth))
            yield CounterMetricFamily("stile_audit_dropped", "audit events not written (queue full or sink error)",
                                      value=float(audit.dropped))


class Metrics:
    def __init__(self, gw: Gateway, registry: CollectorRegistry | None = None, audit: AuditLog | None = None) -> None:
        self.gw = gw
        self.audit = audit
        self.registry = registry or CollectorRegistry()
        self.counts: dict[tuple[str, ...], int] = {}
        self.hists: dict[tuple[str, str], _Hist] = {}
        self.denied: dict[tuple[str, str], int] = {}
        self.registry.register(_RequestCollector(self))
        self.registry.register(_UpstreamCollector(gw))

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def _target(self, ctx: CallContext) -> tuple[str, str]:
        key = _NAMED.get(ctx.method)
        if key is None:
            return "", ""
        view = ctx.view or self.gw.view(ctx.virtual_server)
        index = None if view is None else (view.tool_index if ctx.method == "tools/call" else view.prompt_index)
        target = None if index is None else index.get(ctx.params.get(key, ""))
        if target is None:
            return "(unknown)", ""
        return ctx.params[key], target.upstream

    def _record(self, ctx: CallContext, outcome: str, seconds: float, code: int | None = None) -> None:
        tool, upstream = self._target(ctx)
        if self.audit is not None:
            self.audit.record(ctx, outcome, code, seconds, tool, upstream)
        key = (ctx.virtual_server, ctx.method, tool, upstream, outcome)
        self.counts[key] = self.counts.get(key, 0) + 1
        hkey = (ctx.virtual_server, ctx.method)
        hist = self.hists.get(hkey)
        if hist is None:
            hist = self.hists[hkey] = _Hist()
        hist.buckets[bisect_left(BUCKETS, seconds)] += 1
        hist.count += 1
        hist.sum += seconds

    async def __call__(self, ctx: CallContext, call_next: CallNext) -> Reply:
        start = time.perf_counter()
        try:
            reply = await call_next(ctx)
        except StileError as exc:
            outcome = type(exc).__name__
            if outcome in ("PolicyDenied", "Forbidden"):
                dkey = (ctx.virtual_server, outcome)
                self.denied[dkey] = self.denied.get(dkey, 0) + 1
            self._record(ctx, outcome, time.perf_counter() - start, exc.jsonrpc_code)
            raise
        code = None
        if "error" in reply:
            outcome = "error"
            err = reply["error"]
            code = err.get("code") if isinstance(err, dict) else None
        else:
            result = reply.get("result")
            outcome = "is_error" if isinstance(result, dict) and result.get("isError") is True else "ok"
        self._record(ctx, outcome, time.perf_counter() - start, code)
        return reply
