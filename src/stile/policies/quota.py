"""Quotas per day or month, in calls or cost units, per agent, user, team and tool: `policies.quota`.

Each quota counts the `tools/call`s it covers (`tools` globs on `upstream.tool`, `virtual_servers`), one
counter per subject (the agent, the user, the value of the principal claim `claim` for `key: team`, or
the tool) and window (the UTC day `2026-12-04` or month `2026-12`). `unit: cost` charges the `costs:`
table's units (default 1 a call). A call that would take a counter past `limit` is refused (JSON-RPC
`-32012`, `data`: quota, limit, used, unit, resets_at) before reaching the upstream; admitted calls are
charged when admitted (an upstream error still counts). Crossing a `warn_at` fraction (default 80% and
100%) writes one audit event (outcome `quota_warning`) and counts `stile_quota_warnings_total`.

No database query per call: the decision reads an in-memory view (loaded at start), and charges go
to an accumulator that a background task adds to the state store's counter table every `flush_seconds`
(atomic increments, so replicas never lose each other's counts), then reloads every counter of the
current windows. Across replicas the view is eventually consistent: each replica sees the others' usage
at most `flush_seconds` (plus one flush) late, so a quota can be overrun by at most what the other
replicas admit in that time. A clean stop flushes; a crash loses at most the last `flush_seconds` of
charges. A flush that fails keeps its deltas for the next one (logged once a minute, counted).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from prometheus_client.core import CounterMetricFamily
from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy.exc import SQLAlchemyError

from stile.core.catalog import matches
from stile.core.context import CallContext, CallNext, Principal, Reply
from stile.observe.audit import CostTable
from stile.policies.registry import PolicyDeps, PolicyType, register
from stile.stores.quotas import DEFAULT_TABLE, CounterKey, QuotaStore
from stile.tasks import spawn
from stile.wire.errors import ClientError

if TYPE_CHECKING:
    from stile.core.catalog import ViewSource
    from stile.observe.audit import AuditLog

log = logging.getLogger("stile.quota")
QUOTA_EXCEEDED = -32012
LOG_EVERY = 60.0
STORE_ERRORS = (SQLAlchemyError, OSError)


class QuotaSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")  # the counter's name in the state store
    key: Literal["agent", "user", "team", "tool"]
    claim: str = "team"  # key team: the principal claim naming the team
    period: Literal["day", "month"] = "day"
    limit: float = Field(gt=0)
    unit: Literal["calls", "cost"] = "calls"
    tools: list[str] | None = None  # `upstream.tool` globs; default every tool
    virtual_servers: list[str] | None = None


class QuotaConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    quotas: list[QuotaSpec] = Field(default_factory=list)
    flush_seconds: float = Field(default=5.0, gt=0, le=3600)
    warn_at: list[float] = Field(default_factory=lambda: [0.8, 1.0])
    table: str = DEFAULT_TABLE

    @model_validator(mode="after")
    def _check(self) -> QuotaConfig:
        names = [q.name for q in self.quotas]
        if len(names) != len(set(names)):
            raise ValueError("quota names must be unique")
        if any(not 0 < w <= 1 for w in self.warn_at):
            raise ValueError("warn_at fractions must be in (0, 1]")
        return self


class QuotaExceeded(ClientError):
    jsonrpc_code = QUOTA_EXCEEDED
    http_status = 200


def window_of(period: str, at: float) -> tuple[str, float]:
    """(the window's name, when it ends, epoch seconds) for `at` in UTC."""
    d = datetime.fromtimestamp(at, UTC)
    if period == "day":
        start = datetime(d.year, d.month, d.day, tzinfo=UTC)
        return start.strftime("%Y-%m-%d"), start.timestamp() + 86_400
    nxt = datetime(d.year + (d.month == 12), d.month % 12 + 1, 1, tzinfo=UTC)
    return d.strftime("%Y-%m"), nxt.timestamp()


def subject_of(spec: QuotaSpec, principal: Principal, ref: str) -> str | None:
    if spec.key == "agent":
        return principal.agent
    if spec.key == "user":
        return principal.user
    if spec.key == "tool":
        return ref
    team = principal.claims.get(spec.claim)
    return str(team) if isinstance(team, (str, int)) and not isinstance(team, bool) else None


class Quota:
    def __init__(self, cfg: QuotaConfig, views: ViewSource, costs: dict[str, float], audit: AuditLog | None,
                 store: QuotaStore | None, clock: Any = time.time) -> None:
        self.cfg = cfg
        self.views = views
        self.cost = CostTable(costs)
        self.audit = audit
        self.store = store
        self.clock = clock
        self.view: dict[CounterKey, float] = {}  # what the store holds plus what this process has not flushed
        self.pending: dict[CounterKey, float] = {}
        self._applies: dict[tuple[str, str], list[QuotaSpec]] = {}
        self._windows: dict[str, tuple[str, float]] = {}  # period -> (window, end)
        self.warnings: dict[tuple[str, str], int] = {}  # (quota, threshold) -> count
        self.exceeded: dict[str, int] = {}
        self.flush_errors = 0
        self._last_log = -LOG_EVERY
        self._task: asyncio.Task[None] | None = None

    def window(self, period: str, now: float) -> str:
        cached = self._windows.get(period)
        if cached is None or now >= cached[1]:
            cached = self._windows[period] = window_of(period, now)
        return cached[0]

    def _quotas_for(self, vs: str, ref: str) -> list[QuotaSpec]:
        found = self._applies.get((vs, ref))
        if found is None:
            found = [q for q in self.cfg.quotas if (q.virtual_servers is None or vs in q.virtual_servers)
                     and (q.tools is None or matches(ref, q.tools))]
            if len(self._applies) > 10_000:
                self._applies.clear()
            self._applies[(vs, ref)] = found
        return found

    async def __call__(self, ctx: CallContext, call_next: CallNext) -> Reply:
        if ctx.method != "tools/call":
            return await call_next(ctx)
        view = ctx.view or self.views.view(ctx.virtual_server)
        name = ctx.params.get("name")
        target = view.tool_index.get(name) if view is not None and isinstance(name, str) else None
        if target is None:
            return await call_next(ctx)
        ref = f"{target.upstream}.{target.original}"
        quotas = self._quotas_for(ctx.virtual_server, ref)
        if quotas:
            self.charge(ctx, quotas, ref)
        return await call_next(ctx)

    def charge(self, ctx: CallContext, quotas: list[QuotaSpec], ref: str) -> None:
        """Refuse if any quota would be exceeded; else charge them all."""
        now = self.clock()
        charges: list[tuple[QuotaSpec, CounterKey, float]] = []
        for q in quotas:
            subject = subject_of(q, ctx.principal, ref)
            if subject is None:
                continue
            key = (q.name, subject, self.window(q.period, now))
            units = 1.0 if q.unit == "calls" else self.cost(ref)
            used = self.view.get(key, 0.0)
            if used + units > q.limit:
                self.exceeded[q.name] = self.exceeded.get(q.name, 0) + 1
                resets = datetime.fromtimestamp(self._windows[q.period][1], UTC).isoformat().replace("+00:00", "Z")
                raise QuotaExceeded(f"quota {q.name} exceeded: {used:g} of {q.limit:g} {q.unit} used this "
                                    f"{q.period} (resets {resets})",
                                    data={"quota": q.name, "limit": q.limit, "used": used, "unit": q.unit,
                                          "resets_at": resets})
            charges.append((q, key, units))
        for q, key, units in charges:
            before = self.view.get(key, 0.0)
            after = self.view[key] = before + units
            self.pending[key] = self.pending.get(key, 0.0) + units
            for threshold in self.cfg.warn_at:
                if before < threshold * q.limit <= after:
                    self._warn(ctx, q, key, after, threshold)

    def _warn(self, ctx: CallContext, q: QuotaSpec, key: CounterKey, used: float, threshold: float) -> None:
        label = f"{threshold:g}"
        self.warnings[(q.name, label)] = self.warnings.get((q.name, label), 0) + 1
        reason = (f"quota {q.name} for {q.key} {key[1]} at {used / q.limit:.0%} ({used:g} of {q.limit:g} {q.unit}, "
                  f"{key[2]})")
        log.warning("%s", reason)
        if self.audit is not None and self.audit.enabled:
            self.audit.record_http(ctx.virtual_server, ctx.headers, "quota_warning", reason, method=ctx.method,
                                   principal=ctx.principal if ctx.principal.method != "none" else None,
                                   error_type="QuotaWarning")

    # --- off the request path -------------------------------------------------------------
    def _current_windows(self) -> set[str]:
        now = self.clock()
        return {self.window(q.period, now) for q in self.cfg.quotas}

    async def start(self) -> None:
        if self.store is None:
            log.warning("quota: no state store; counters are kept in memory only (lost on restart)")
            return
        try:
            self.view = await self.store.current(self._current_windows())
        except STORE_ERRORS as exc:
            self._failed("load", exc)
        self._task = spawn(self._flush_loop(), name="quota-flush")

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.flush_seconds)
            await self.flush()

    async def flush(self) -> None:
        """Add the pending charges to the store, then reload the current windows (every replica's charges)."""
        if self.store is None:
            return
        batch, self.pending = self.pending, {}
        try:
            await self.store.add(batch)
        except STORE_ERRORS as exc:
            for key, n in batch.items():
                self.pending[key] = self.pending.get(key, 0.0) + n
            self._failed("flush", exc)
            return
        try:
            stored = await self.store.current(self._current_windows())
        except STORE_ERRORS as exc:
            self._failed("reload", exc)
            return
        for key, n in self.pending.items():  # charged while the flush ran
            stored[key] = stored.get(key, 0.0) + n
        self.view = stored

    def _failed(self, what: str, exc: Exception) -> None:
        self.flush_errors += 1
        now = time.monotonic()
        if now - self._last_log >= LOG_EVERY:
            self._last_log = now
            log.error("quota store %s failed (%d failures so far; charges kept in memory): %s", what,
                      self.flush_errors, exc)

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.flush()
        if self.store is not None:
            await self.store.aclose()

    def collect(self) -> Iterator[Any]:
        warnings = CounterMetricFamily("stile_quota_warnings", "quota thresholds crossed",
                                       labels=["quota", "threshold"])
        for (name, threshold), n in self.warnings.items():
            warnings.add_metric([name, threshold], float(n))
        yield warnings
        exceeded = CounterMetricFamily("stile_quota_exceeded", "calls refused by a quota", labels=["quota"])
        for name, n in self.exceeded.items():
            exceeded.add_metric([name], float(n))
        yield exceeded
        errors = CounterMetricFamily("stile_quota_store_errors", "quota counter loads/flushes that failed")
        errors.add_metric([], float(self.flush_errors))
        yield errors


def _factory(deps: PolicyDeps, config: Any) -> Quota | None:
    cfg = config if isinstance(config, QuotaConfig) else QuotaConfig()
    if not cfg.quotas:
        return None  # nothing configured: not in the chain
    for q in cfg.quotas:
        for vs in set(q.virtual_servers or ()) - set(deps.cfg.virtual_servers):
            log.warning("policies.quota: quota %s names an unknown virtual server %r", q.name, vs)
    store = QuotaStore(deps.state_url, cfg.table) if deps.state_url else None
    policy = Quota(cfg, deps.views, deps.cfg.costs, deps.observers.audit, store)
    deps.observers.metrics.registry.register(policy)
    deps.lifecycle.append(policy)
    return policy


QUOTA = register(PolicyType("quota", _factory, QuotaConfig,
                            doc="daily/monthly call or cost quotas per agent, user, team, tool", order=25))
