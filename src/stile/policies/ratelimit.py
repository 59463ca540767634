"""Rate limits (GCRA with a burst) per agent, user, virtual server, tool and upstream: `policies.ratelimit`.

Two kinds of limit, by what they count:
- **request limits** (`key: agent | user | virtual_server` without `tools`): every request a client sends
  to the virtual servers they cover (notifications excepted). Exceeded: HTTP 429 with `Retry-After`
  (seconds, rounded up), in both eras, and a JSON-RPC error body with `data.retry_after_ms`.
- **call limits** (`key: tool | upstream`, or any key with `tools:`): `tools/call` of the tools they
  cover (`upstream.tool` globs in `tools`, `match` for a tool or upstream name). Exceeded: a JSON-RPC
  error `-32011` with `data.retry_after_ms` (the HTTP status stays 200): other tools still work.
A limit keyed by agent or user applies to callers that have one; each distinct value (agent, user,
virtual server, tool, upstream) has its own bucket. `burst` defaults to the rate's count (`5/min`
admits 5 at once, then one every 12 s). A refused call consumes nothing from any bucket.

Store: in this process (`MemoryGcra`), or Redis when `redis: redis://host:port/db` is set here or at the
top level of the config (the deployment's bus; keys then under `<redis_prefix>rl:`): one Lua script per
call, shared by every worker and replica. Without Redis, each worker of `--workers N` and each replica
keeps its own buckets (a client spread over N processes gets up to N times the rate). When Redis fails
(down, slow past `redis_timeout` seconds, a bad reply), `on_store_error` applies: `open` (the default: a
limiter outage must not take the gateway down) admits, `closed` refuses as if limited (retry after 1 s).
Either way it is logged at most once a minute and counted (`stile_ratelimit_store_errors_total`); a
failed Redis is retried at most once a second, so an outage costs a call no waiting. Denials are audited
(outcome `denied`, the limit in the reason) and counted
(`stile_denials_total{reason="RateLimited"|"TooManyRequests"}`, `stile_ratelimit_denied_total{limit}`).
With no limits configured the policy is not in the chain at all.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Literal

from prometheus_client.core import CounterMetricFamily
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from stile.core.catalog import matches
from stile.core.context import CallContext, CallNext, Principal, Reply
from stile.policies.gcra import NS, Bucket, MemoryGcra, parse_rate
from stile.policies.ratelimit_redis import RedisGcra
from stile.policies.registry import PolicyDeps, PolicyType, register
from stile.stores.redis_lite import RedisReplyError, RedisUnavailable, parse_url
from stile.wire.errors import ClientError

if TYPE_CHECKING:
    from stile.core.catalog import ViewSource

log = logging.getLogger("stile.ratelimit")
RATE_LIMITED = -32011
LOG_EVERY = 60.0  # seconds between two log lines about the store failing
Key = Literal["agent", "user", "virtual_server", "tool", "upstream"]


class LimitConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    key: Key
    rate: str  # COUNT/UNIT: 10/s, 5/min, 1000/h, 20000/day, 100/10s
    burst: int | None = Field(default=None, ge=1)  # default: the rate's count
    match: str | None = None  # glob on the key's value: `upstream.tool`, an upstream, an agent, a user
    virtual_servers: list[str] | None = None  # default: every virtual server
    tools: list[str] | None = None  # `upstream.tool` globs: makes it a call limit on these tools
    name: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]{1,64}$")  # in keys, reasons, metrics

    @field_validator("rate")
    @classmethod
    def _rate(cls, value: str) -> str:
        parse_rate(value)
        return value

    @property
    def per_call(self) -> bool:
        return self.key in ("tool", "upstream") or self.tools is not None


class RateLimitConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    limits: list[LimitConfig] = Field(default_factory=list)
    redis: str | None = None  # redis://host:port/db shared by every worker and replica; default: in memory
    redis_timeout: float = Field(default=0.1, gt=0, le=5)  # seconds for one Redis round trip (connect included)
    on_store_error: Literal["open", "closed"] = "open"
    key_prefix: str = "stile:rl:"

    @field_validator("redis")
    @classmethod
    def _redis(cls, value: str | None) -> str | None:
        if value is not None:
            parse_url(value)
        return value

    @model_validator(mode="after")
    def _unique_names(self) -> RateLimitConfig:
        names = [lim.name for lim in self.limits if lim.name is not None]
        if len(names) != len(set(names)):
            raise ValueError("limit names must be unique")
        return self


class TooManyRequests(ClientError):
    """A request limit: HTTP 429 with Retry-After (both eras)."""

    jsonrpc_code = RATE_LIMITED
    http_status = 429

    def http_headers(self) -> list[tuple[bytes, bytes]]:
        ms = self.data.get("retry_after_ms", 1000) if isinstance(self.data, dict) else 1000
        return [(b"retry-after", str(max(1, -(-int(ms) // 1000))).encode())]


class RateLimited(ClientError):
    """A call limit: a JSON-RPC error with `data.retry_after_ms`; other tools still answer."""

    jsonrpc_code = RATE_LIMITED
    http_status = 200


class _Limit:
    __slots__ = ("bucket", "cfg", "label", "name")

    def __init__(self, index: int, cfg: LimitConfig) -> None:
        rate = parse_rate(cfg.rate)
        self.cfg = cfg
        self.name = cfg.name or f"{index}"
        self.label = cfg.name or f"{cfg.key} {cfg.rate}"
        self.bucket = Bucket.of(rate, cfg.burst or rate.count)

    def subject(self, principal: Principal, vs: str, ref: str, upstream: str) -> str | None:
        key = self.cfg.key
        value = (principal.agent if key == "agent" else principal.user if key == "user" else vs
                 if key == "virtual_server" else ref if key == "tool" else upstream)
        if value is None or (self.cfg.match is not None and not matches(value, [self.cfg.match])):
            return None
        return f"{self.name}:{key}:{value}"


class RateLimit:
    def __init__(self, cfg: RateLimitConfig, views: ViewSource, vs_names: list[str]) -> None:
        self.cfg = cfg
        self.views = views
        limits = [_Limit(i, c) for i, c in enumerate(cfg.limits)]
        covers = {vs: [lim for lim in limits if lim.cfg.virtual_servers is None or vs in lim.cfg.virtual_servers]
                  for vs in vs_names}
        self.request_limits = {vs: [lim for lim in ls if not lim.cfg.per_call] for vs, ls in covers.items()}
        self.call_limits = {vs: [lim for lim in ls if lim.cfg.per_call] for vs, ls in covers.items()}
        self._per_tool: dict[tuple[str, str], list[_Limit]] = {}
        self.memory = MemoryGcra()
        self.redis = RedisGcra(cfg.redis, cfg.redis_timeout, cfg.key_prefix) if cfg.redis else None
        self.store_errors = 0
        self.denied: dict[str, int] = {}
        self._last_log = -LOG_EVERY

    async def __call__(self, ctx: CallContext, call_next: CallNext) -> Reply:
        vs = ctx.virtual_server
        method = ctx.method
        if method.startswith("notifications/"):
            return await call_next(ctx)
        limits = self.request_limits.get(vs)
        if limits:
            checks = [(s, lim) for lim in limits if (s := lim.subject(ctx.principal, vs, "", "")) is not None]
            if checks:
                if self.redis is None:  # in memory: no coroutine to create and await
                    self._refuse(checks, self.memory.acquire([(s, lim.bucket) for s, lim in checks]), TooManyRequests)
                else:
                    await self._acquire(checks, TooManyRequests)
        if method == "tools/call" and self.call_limits.get(vs):
            view = ctx.view or self.views.view(vs)
            name = ctx.params.get("name")
            target = view.tool_index.get(name) if view is not None and isinstance(name, str) else None
            if target is not None:  # an unknown tool: the router answers it
                ref = f"{target.upstream}.{target.original}"
                checks = [(s, lim) for lim in self._tool_limits(vs, ref)
                          if (s := lim.subject(ctx.principal, vs, ref, target.upstream)) is not None]
                if checks:
                    if self.redis is None:
                        self._refuse(checks, self.memory.acquire([(s, lim.bucket) for s, lim in checks]), RateLimited)
                    else:
                        await self._acquire(checks, RateLimited)
        return await call_next(ctx)

    def _tool_limits(self, vs: str, ref: str) -> list[_Limit]:
        found = self._per_tool.get((vs, ref))
        if found is None:
            found = [lim for lim in self.call_limits[vs] if lim.cfg.tools is None or matches(ref, lim.cfg.tools)]
            if len(self._per_tool) > 10_000:
                self._per_tool.clear()
            self._per_tool[(vs, ref)] = found
        return found

    async def _acquire(self, checks: list[tuple[str, _Limit]], error: type[ClientError]) -> None:
        pairs = [(s, lim.bucket) for s, lim in checks]
        if self.redis is None:
            index, wait_ns = self.memory.acquire(pairs)
        else:
            try:
                index, wait_ns = await self.redis.acquire(pairs)
            except (RedisUnavailable, RedisReplyError) as exc:
                self._store_failed(exc)
                if self.cfg.on_store_error == "open":
                    return
                raise error("rate limit store unavailable: retry later",
                            data={"retry_after_ms": 1000, "limit": "(store)"}) from None
        self._refuse(checks, (index, wait_ns), error)

    def _refuse(self, checks: list[tuple[str, _Limit]], verdict: tuple[int, int], error: type[ClientError]) -> None:
        """Raise `error` for the refusing check of `verdict` (index, ns to wait); nothing when admitted (-1)."""
        index, wait_ns = verdict
        if index < 0:
            return
        limit = checks[index][1]
        ms = max(1, -(-wait_ns * 1000 // NS))
        self.denied[limit.label] = self.denied.get(limit.label, 0) + 1
        raise error(f"rate limit exceeded ({limit.label}): retry after {ms} ms",
                    data={"retry_after_ms": ms, "limit": limit.label})

    def _store_failed(self, exc: Exception) -> None:
        self.store_errors += 1
        now = time.monotonic()
        if now - self._last_log >= LOG_EVERY:
            self._last_log = now
            log.error("rate limit store failed (%s); on_store_error=%s: %s calls (%d failures so far)", exc,
                      self.cfg.on_store_error, "admitting" if self.cfg.on_store_error == "open" else "refusing",
                      self.store_errors)

    def collect(self) -> Iterator[Any]:
        """Prometheus collector: store failures and denials per limit."""
        errors = CounterMetricFamily("stile_ratelimit_store_errors", "rate limit store failures (on_store_error "
                                     "applied)")
        errors.add_metric([], float(self.store_errors))
        yield errors
        denied = CounterMetricFamily("stile_ratelimit_denied", "requests refused by a rate limit", labels=["limit"])
        for label, n in self.denied.items():
            denied.add_metric([label], float(n))
        yield denied

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        if self.redis is not None:
            await self.redis.aclose()


def _factory(deps: PolicyDeps, config: Any) -> RateLimit | None:
    cfg = config if isinstance(config, RateLimitConfig) else RateLimitConfig()
    if not cfg.limits:
        return None  # nothing configured: not in the chain, no cost
    if cfg.redis is None and deps.cfg.redis:  # the deployment's Redis (top-level `redis:`) unless set here
        update: dict[str, Any] = {"redis": deps.cfg.redis}
        if "key_prefix" not in cfg.model_fields_set:
            update["key_prefix"] = f"{deps.cfg.redis_prefix}rl:"
        cfg = cfg.model_copy(update=update)
    for i, lim in enumerate(cfg.limits):
        for vs in set(lim.virtual_servers or ()) - set(deps.cfg.virtual_servers):
            log.warning("policies.ratelimit.limits[%d]: unknown virtual server %r (the limit never applies there)",
                        i, vs)
    policy = RateLimit(cfg, deps.views, list(deps.cfg.virtual_servers))
    deps.observers.metrics.registry.register(policy)
    deps.lifecycle.append(policy)
    return policy


RATELIMIT = register(PolicyType("ratelimit", _factory, RateLimitConfig,
                                doc="GCRA rate limits per agent, user, virtual server, tool, upstream", order=20))
