"""Prometheus metrics: requests, latency (total, upstream, gateway overhead), health, audit, per registry.

`Observe` (the first policy) reports every finished request here, denials included. Label values come
only from the gateway's own vocabulary, never from free client input:
- `method`: one of the MCP methods Stile knows (`KNOWN_METHODS`), anything else is `other`;
- `tool`: an exposed name in the *caller's* view, else `(unknown)` (hidden and unknown look the same);
- virtual server and upstream names come from the config, outcomes and reasons from fixed sets.
As a second line of defence every family holds at most `limits.max_metric_series` label sets: a new
one beyond that is counted in the single `(overflow)` label set and in
`stile_metric_series_overflow_total{family}`; label values are cut to `MAX_LABEL` characters.

The hot path only bumps plain integers (one event loop, no locks); the Prometheus families are built at
scrape time. prometheus_client's own Counter/Histogram children cost ~10 µs a call here (locks,
per-observation bucket scan), this ~1 µs.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from stile.observe.audit import AuditLog

if TYPE_CHECKING:
    from collections.abc import Iterator

    from stile.core.gateway import Gateway

BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
           30.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MAX_LABEL = 128  # characters of a label value (exposed tool names are the only long ones)
MAX_SERIES = 10_000  # default label sets per family (`limits.max_metric_series`)
OVERFLOW = "(overflow)"
OTHER_METHOD = "other"
# The MCP methods a client may send, both eras (the lead's method table will replace this set).
KNOWN_METHODS = frozenset({
    "initialize", "ping", "tools/list", "tools/call", "prompts/list", "prompts/get", "resources/list",
    "resources/templates/list", "resources/read", "resources/subscribe", "resources/unsubscribe",
    "completion/complete", "logging/setLevel", "server/discover", "subscriptions/listen",
    "notifications/initialized", "notifications/cancelled", "notifications/progress",
    "notifications/roots/list_changed",
    "tasks/get", "tasks/update", "tasks/cancel", "tasks/list", "tasks/result",
})


def method_label(method: str) -> str:
    return method if method in KNOWN_METHODS else OTHER_METHOD


class _UpstreamCollector:
    def __init__(self, gw: Gateway) -> None:
        self.gw = gw

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily("stile_upstream_up", "1 when the upstream is reachable and discovered",
                               labels=["upstream", "era"])
        for name, upstream in self.gw.upstreams.items():
            ready = self.gw.health.ready(name)  # the same answer as /readyz (active health checks)
            up.add_metric([name, upstream.era or "unknown"], 1.0 if ready else 0.0)
        yield up
        endpoints = GaugeMetricFamily("stile_upstream_endpoints", "endpoints of a pooled upstream by state "
                                      "(healthy, down, ejected, open, half_open)", labels=["upstream", "state"])
        for name, upstream in self.gw.upstreams.items():
            status = getattr(upstream, "endpoint_status", None)  # upstreams with `endpoints:` (upstreams/pool.py)
            if callable(status):
                states = Counter(e["state"] for e in status())
                for state in ("healthy", "down", "ejected", "open", "half_open"):
                    endpoints.add_metric([name, state], float(states.get(state, 0)))
        yield endpoints


class _Hist:
    __slots__ = ("buckets", "count", "sum")

    def __init__(self) -> None:
        self.buckets = [0] * (len(BUCKETS) + 1)
        self.count = 0
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.buckets[bisect_left(BUCKETS, seconds)] += 1
        self.count += 1
        self.sum += seconds


def _histogram(name: str, doc: str, labels: list[str], hists: dict[tuple[str, ...], _Hist]) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=labels)
    for key, h in list(hists.items()):
        cumulative, acc = [], 0
        for bound, n in zip((*BUCKETS, float("inf")), h.buckets, strict=True):
            acc += n
            cumulative.append(("+Inf" if bound == float("inf") else repr(bound), acc))
        family.add_metric(list(key), cumulative, h.sum)
    return family


def _counter(name: str, doc: str, labels: list[str], counts: dict[tuple[str, ...], int]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=labels)
    for key, n in list(counts.items()):
        family.add_metric(list(key), n)
    return family


class _RequestCollector:
    def __init__(self, metrics: Metrics) -> None:
        self.m = metrics

    def collect(self) -> Iterator[Any]:
        m = self.m
        yield _counter("stile_requests", "MCP requests by outcome (ok, is_error, error, denied)",
                       ["virtual_server", "method", "tool", "upstream", "outcome"], m.counts)
        yield _histogram("stile_request_seconds", "time from request to answer, gateway included",
                         ["virtual_server", "method"], m.total)
        yield _histogram("stile_upstream_seconds", "time spent waiting on the upstream, per request that reached one",
                         ["upstream"], m.upstream)
        yield _histogram("stile_overhead_seconds", "time the gateway itself added (total minus upstream)",
                         ["virtual_server", "method"], m.overhead)
        yield _counter("stile_denials", "requests denied by policy", ["virtual_server", "reason"], m.denied)
        yield _counter("stile_auth_failures", "HTTP requests refused before the pipeline (401, 403 scope)",
                       ["virtual_server", "reason"], m.auth_failures)
        yield _counter("stile_rejected", "requests the transport refused before the pipeline, by error class",
                       ["virtual_server", "reason"], m.rejections)
        yield _counter("stile_cache_lookups", "response cache lookups (policies.cache) by result: hit, miss",
                       ["virtual_server", "result"], m.cache_lookups)
        yield _counter("stile_pin_events", "definitions pinning hid or flagged (changed, new) and lookalike tools",
                       ["upstream", "kind", "status", "action"], m.pin_events)
        yield _counter("stile_metric_series_overflow", "observations counted in a family's (overflow) label set "
                       "because the family already held limits.max_metric_series label sets",
                       ["family"], {(family,): n for family, n in m.overflowed.items()})
        yield GaugeMetricFamily("stile_listen_streams", "open notification streams (legacy GET, listen)",
                                value=float(m.gw.hub.count()))
        yield GaugeMetricFamily("stile_sessions_active", "legacy sessions used in the last 5 minutes (every "
                                "replica sharing the bus; this one's alone with the in-process bus or the bus down)",
                                value=float(m.gw.cluster.active_sessions()))
        bus = m.gw.cluster.status()
        up = GaugeMetricFamily("stile_bus_up", "1 when the cross-replica bus is connected (always 1 in-process)",
                               labels=["kind", "replica"])
        up.add_metric([bus["kind"], bus["replica"]], 1.0 if bus["up"] else 0.0)
        yield up
        audit = m.audit
        if audit is not None and audit.enabled:
            yield GaugeMetricFamily("stile_audit_queue_depth", "audit events waiting to be written",
                                    value=float(audit.depth))
            yield CounterMetricFamily("stile_audit_dropped", "audit events not queued because the queue was full",
                                      value=float(audit.dropped))
            yield CounterMetricFamily("stile_audit_wal_errors", "audit events queued without crash safety (the "
                                      "write-ahead log could not take them) and failed WAL fsyncs/checkpoints",
                                      value=float(audit.wal_errors + (audit.commit.errors if audit.commit else 0)))
            errors = CounterMetricFamily("stile_audit_sink_errors", "failed writes to an audit sink (then spooled)",
                                         labels=["sink"])
            spooled = GaugeMetricFamily("stile_audit_spooled_events", "audit events spooled, waiting for their sink",
                                        labels=["sink"])
            for sink in audit.sinks:
                errors.add_metric([sink.name], float(getattr(sink, "errors", 0) + audit.sink_errors[sink.name]))
                spooled.add_metric([sink.name], float(getattr(sink, "pending", 0)))
            yield errors
            yield spooled
        retention = m.retention
        if retention is not None:  # audit.retention (observe/audit_retention.Pruner)
            yield CounterMetricFamily("stile_audit_pruned", "audit events pruned by audit.retention (this process)",
                                      value=float(retention.pruned))
            yield CounterMetricFamily("stile_audit_prune_failures", "prune runs that failed and chains left unpruned "
                                      "because they do not verify", value=float(retention.failures))


class PruneCounts(Protocol):
    pruned: int
    failures: int


class Metrics:
    def __init__(self, gw: Gateway, registry: CollectorRegistry | None = None, audit: AuditLog | None = None,
                 max_series: int = MAX_SERIES) -> None:
        self.gw = gw
        self.audit = audit
        self.retention: PruneCounts | None = None  # set by the assembly when audit.retention is on
        self.max_series = max_series
        self.registry = registry or CollectorRegistry()
        self.counts: dict[tuple[str, ...], int] = {}
        self.total: dict[tuple[str, ...], _Hist] = {}
        self.overhead: dict[tuple[str, ...], _Hist] = {}
        self.upstream: dict[tuple[str, ...], _Hist] = {}
        self.denied: dict[tuple[str, ...], int] = {}
        self.auth_failures: dict[tuple[str, ...], int] = {}
        self.rejections: dict[tuple[str, ...], int] = {}
        self.cache_lookups: dict[tuple[str, ...], int] = {}
        self.overflowed: dict[str, int] = {}
        self.pin_events: dict[tuple[str, ...], int] = {}
        self.registry.register(_RequestCollector(self))
        self.registry.register(_UpstreamCollector(gw))

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def _admit(self, family: str, store: dict[tuple[str, ...], Any], key: tuple[str, ...]) -> tuple[str, ...]:
        """The key a label set not yet in `store` is counted under: itself, or `(overflow)` once full."""
        key = tuple(v[:MAX_LABEL] for v in key)
        if key in store or len(store) < self.max_series:
            return key
        self.overflowed[family] = self.overflowed.get(family, 0) + 1
        return (OVERFLOW,) * len(key)

    def _bump(self, family: str, store: dict[tuple[str, ...], int], key: tuple[str, ...]) -> None:
        n = store.get(key)
        if n is None:
            key = self._admit(family, store, key)
            n = store.get(key, 0)
        store[key] = n + 1

    def observe(self, vs: str, method: str, tool: str, upstream: str, outcome: str, seconds: float,
                upstream_seconds: float) -> None:
        # Stored keys only ever hold known method names, so a hit needs no check: an unknown method
        # misses and is renamed `other` on the (rare) miss path, which also cuts and caps.
        key: tuple[str, ...] = (vs, method, tool, upstream, outcome)
        n = self.counts.get(key)
        if n is None:
            method = method_label(method)
            key = self._admit("stile_requests", self.counts, (vs, method, tool, upstream, outcome))
            n = self.counts.get(key, 0)
        self.counts[key] = n + 1
        hkey: tuple[str, ...] = (vs, method)
        total = self.total.get(hkey)
        if total is None:
            hkey = self._admit("stile_request_seconds", self.total, (vs, method_label(method)))
            total = self.total.get(hkey)
            if total is None:
                total = self.total[hkey] = _Hist()
                self.overhead[hkey] = _Hist()
        total.observe(seconds)
        self.overhead[hkey].observe(max(seconds - upstream_seconds, 0.0))
        if upstream and upstream_seconds:
            ukey: tuple[str, ...] = (upstream,)
            up = self.upstream.get(ukey)
            if up is None:
                ukey = self._admit("stile_upstream_seconds", self.upstream, ukey)
                up = self.upstream.get(ukey)
                if up is None:
                    up = self.upstream[ukey] = _Hist()
            up.observe(upstream_seconds)

    def denial(self, vs: str, reason: str) -> None:
        self._bump("stile_denials", self.denied, (vs, reason))

    def cache(self, vs: str, result: str) -> None:
        """A response cache lookup (`policies.cache`): `hit` or `miss`."""
        self._bump("stile_cache_lookups", self.cache_lookups, (vs, result))

    def rejected(self, vs: str, reason: str) -> None:
        self._bump("stile_rejected", self.rejections, (vs, reason))

    def pin_event(self, upstream: str, kind: str, status: str, action: str) -> None:
        self._bump("stile_pin_events", self.pin_events, (upstream, kind, status, action))

    def auth_failure(self, vs: str, reason: str) -> None:
        self._bump("stile_auth_failures", self.auth_failures, (vs, reason))
