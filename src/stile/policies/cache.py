"""The response cache policy (`policies.cache`): replies of read-only tools and resource reads, per caller.

What is cached: `tools/call` of tools annotated `readOnlyHint: true` or listed under `tools:`
(`upstream.tool` names or globs; `ttl_ms: 0` there excludes one), and `resources/read` (`resources: true`).
Lists are answered from the gateway's own view already and are not cached. Errors, `isError` results,
`input_required` rounds and calls carrying `inputResponses`/`requestState` are never cached.

The key is the virtual server, the client's era and protocol version (replies are shaped per era),
the method, the exposed tool name or URI, the arguments as canonical JSON (orjson, sorted keys) and
the caller: (auth method, agent, user, roles). A tool configured `scope: shared`, or a reply whose
upstream said `cacheScope: public`, is stored once for every caller of the virtual server (only
callers whose view shows the tool or URI reach the lookup; hidden ones are refused by the router).
The cached reply is the one this policy gets from `call_next`: already rewritten for the virtual
server's names, so two virtual servers never share an entry.

Lifetime: a modern upstream's `ttlMs` wins (0: not cached), capped by the tool's `ttl_ms` and
`max_ttl_ms`; without one, the tool's `ttl_ms`, else `default_ttl_ms`. A hit served to a modern
client carries the remaining `ttlMs`. Upstream `notifications/*/list_changed` invalidate everything
cached from that upstream, `notifications/resources/updated` the reads of that URI (`cache_store`).

Storage is per process (an LRU bounded by `max_bytes` and `max_entries`); a hit sets
`ctx.stats.cache`, which `Observe` reports (`cache_hit` in the audit event, `stile_cache_lookups_total`).
Disabled (the default), the policy costs one attribute check per request.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field

from stile.core.catalog import View, ViewSource, matches
from stile.core.context import CallContext, CallNext, Reply
from stile.policies.cache_store import Generations, MemoryStore
from stile.policies.registry import PolicyDeps, PolicyType, register
from stile.wire.jsonrpc import Message

_SORTED = orjson.OPT_SORT_KEYS
_MRTR = ("inputResponses", "requestState")
_CHANGED = frozenset({"notifications/tools/list_changed", "notifications/resources/list_changed",
                      "notifications/prompts/list_changed"})
_MAX_RULES = 10_000
_MAX_RAW_ARGS = 128  # canonical arguments longer than this are keyed by their BLAKE2b-256 digest


class ToolCacheConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ttl_ms: int | None = Field(default=None, ge=0)  # None: the default TTL; 0: never cached
    scope: Literal["private", "shared"] = "private"  # shared: one entry for every caller of the virtual server


class CacheConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool = False
    default_ttl_ms: int = Field(default=30_000, ge=0)  # replies without an upstream ttlMs hint
    max_ttl_ms: int = Field(default=86_400_000, ge=0)  # cap on any entry's lifetime (24 h)
    max_bytes: int = Field(default=64 * 1024 * 1024, ge=1)  # serialized replies held, in total
    max_entries: int = Field(default=10_000, ge=1)
    tools: dict[str, ToolCacheConfig] = Field(default_factory=dict)  # by `upstream.tool` name or glob
    resources: bool = True  # cache resources/read


_Rule = tuple[int | None, bool]  # (configured ttl_ms or None, shared)


class ResponseCache:
    def __init__(self, cfg: CacheConfig, views: ViewSource) -> None:
        self.cfg = cfg
        self.enabled = cfg.enabled
        self.views = views
        self.store = MemoryStore(cfg.max_bytes, cfg.max_entries)
        self.generations = Generations()
        self._rules: dict[tuple[str, str, bool], _Rule | None] = {}
        self._exact = cfg.tools
        self._globs = [(p, r) for p, r in cfg.tools.items() if any(c in p for c in "*?[")]

    # --- invalidation ------------------------------------------------------------------------
    def on_upstream_notification(self, upstream: str, method: str, msg: Message) -> None:
        if method in _CHANGED:
            self.generations.upstream_changed(upstream)
        elif method == "notifications/resources/updated":
            params = msg.get("params")
            uri = params.get("uri") if isinstance(params, dict) else None
            if isinstance(uri, str):
                self.generations.resource_updated(upstream, uri)

    # --- which calls ---------------------------------------------------------------------------
    def _rule(self, upstream: str, original: str, read_only: bool) -> _Rule | None:
        key = (upstream, original, read_only)
        if key in self._rules:
            return self._rules[key]
        ref = f"{upstream}.{original}"
        conf = self._exact.get(ref) or next((r for p, r in self._globs if matches(ref, [p])), None)
        rule: _Rule | None
        if conf is not None:
            rule = None if conf.ttl_ms == 0 else (conf.ttl_ms, conf.scope == "shared")
        else:
            rule = (None, False) if read_only else None
        if len(self._rules) >= _MAX_RULES:
            self._rules.clear()
        self._rules[key] = rule
        return rule

    def _lookup_key(self, ctx: CallContext, view: View) -> tuple[Any, str, str | None, _Rule] | None:
        """(key base, upstream, upstream URI or None, rule) of a cacheable request, else None."""
        params = ctx.params
        if _MRTR[0] in params or _MRTR[1] in params:
            return None
        if ctx.method == "tools/call":
            name = params.get("name")
            target = view.tool_index.get(name) if isinstance(name, str) else None
            if target is None:
                return None
            rule = self._rule(target.upstream, target.original, target.annotations.get("readOnlyHint") is True)
            if rule is None:
                return None
            try:
                args = orjson.dumps(params.get("arguments"), option=_SORTED)
            except TypeError:
                return None
            if len(args) > _MAX_RAW_ARGS:
                args = hashlib.blake2b(args, digest_size=32).digest()
            return (ctx.virtual_server, ctx.era, ctx.protocol_version, "tools/call", name, args), \
                target.upstream, None, rule
        if ctx.method == "resources/read" and self.cfg.resources:
            uri = params.get("uri")
            hit = view.visible_uri(uri)
            if hit is None:
                return None
            return (ctx.virtual_server, ctx.era, ctx.protocol_version, "resources/read", uri), hit[0], hit[1], \
                (None, False)
        return None

    # --- the policy ----------------------------------------------------------------------------
    async def __call__(self, ctx: CallContext, call_next: CallNext) -> Reply:
        if not self.enabled:
            return await call_next(ctx)
        view = ctx.view or self.views.view(ctx.virtual_server)
        found = self._lookup_key(ctx, view) if view is not None else None
        if found is None:
            return await call_next(ctx)
        base, upstream, uri, (ttl_ms, shared) = found
        p = ctx.principal
        own = (base, None if shared else (p.method, p.agent, p.user, p.roles))
        public = (base, None)
        token = self.generations.token(upstream, uri)
        store = self.store
        now = time.monotonic()
        cached = store.get(own, token, now)
        if cached is None and not shared:
            cached = store.get(public, token, now)
        if cached is not None:
            ctx.stats.cache = "hit"
            return _served(cached[0], cached[1] - now)
        ctx.stats.cache = "miss"
        ctx.stats.cache_hint = None
        reply = await call_next(ctx)
        res = reply.get("result")
        if not isinstance(res, dict) or res.get("isError") is True or res.get("resultType", "complete") != "complete":
            return reply
        ttl = self._ttl(ttl_ms, ctx.stats.cache_hint)
        if ttl > 0:
            hint = ctx.stats.cache_hint
            key = public if shared or (hint is not None and hint[1] == "public") else own
            key_bytes = sum(len(v) for v in base if isinstance(v, str | bytes))
            store.put(key, orjson.dumps(reply), time.monotonic() + ttl / 1000, token, key_bytes)
        return reply

    def _ttl(self, ttl_ms: int | None, hint: tuple[Any, Any] | None) -> int:
        cap = self.cfg.max_ttl_ms if ttl_ms is None else min(ttl_ms, self.cfg.max_ttl_ms)
        if hint is not None:
            upstream_ttl = hint[0]
            if not isinstance(upstream_ttl, int) or isinstance(upstream_ttl, bool) or upstream_ttl <= 0:
                return 0  # the upstream said 0 (stale at once), or something that is not a TTL
            return min(upstream_ttl, cap)
        return min(self.cfg.default_ttl_ms if ttl_ms is None else ttl_ms, cap)


def _served(data: bytes, remaining_s: float) -> Reply:
    reply: Reply = orjson.loads(data)
    res = reply.get("result")
    if isinstance(res, dict) and "ttlMs" in res:  # a modern client learns how long the answer stays fresh
        res["ttlMs"] = max(int(remaining_s * 1000), 0)
    return reply


def _cache(deps: PolicyDeps, config: Any) -> ResponseCache:
    cache = ResponseCache(config if isinstance(config, CacheConfig) else CacheConfig(), deps.views)
    if cache.enabled:
        deps.on_upstream_notification(cache.on_upstream_notification)
    return cache


CACHE = register(PolicyType("cache", _cache, CacheConfig, doc="response cache of read-only tools and resource reads",
                            order=60))
