"""The response cache policy in process: keys, what is never cached, invalidation during a call.

The view is a real one (`build_view`); the terminal stands in for the router and counts its calls.
Over real sockets and SDK upstreams: tests/e2e/test_cache.py.
"""

from __future__ import annotations

import copy
from typing import Any

from stile.config.model import GatewayConfig
from stile.core.catalog import Inventory, View, build_view
from stile.core.context import CallContext, Principal, Reply
from stile.policies.cache import CacheConfig, ResponseCache
from tests.policies.views import StaticViews

TOOLS = [{"name": "search", "inputSchema": {"type": "object"}, "annotations": {"readOnlyHint": True}},
         {"name": "write", "inputSchema": {"type": "object"}}]
ALICE = Principal(agent="a", user="alice", roles=("reader",), method="api_key")



class Terminal:
    def __init__(self, result: dict[str, Any] | None = None) -> None:
        self.calls = 0
        self.result = result
        self.during: Any = None

    async def __call__(self, ctx: CallContext) -> Reply:
        self.calls += 1
        if self.during is not None:
            self.during()
        return {"result": self.result if self.result is not None else {"content": [{"type": "text",
                                                                                    "text": str(self.calls)}]}}


def setup(**config: Any) -> tuple[ResponseCache, View]:
    cfg = GatewayConfig.model_validate({"upstreams": {"up": {"url": "http://127.0.0.1:1/mcp"}},
                                        "virtual_servers": {"vs": {"upstreams": ["up"], "prefix": "never"}}})
    view = build_view("vs", cfg.virtual_servers["vs"], cfg, {"up": Inventory(tools=TOOLS, ok=True)})
    return ResponseCache(CacheConfig(enabled=True, **config), StaticViews(view)), view


def call(view: View, name: str = "search", args: Any = None, **params: Any) -> CallContext:
    return CallContext("vs", "tools/call", {"name": name, "arguments": args or {"q": 1}, **params}, 1, "modern",
                       "2026-07-28", principal=ALICE, view=view)


async def test_a_repeated_call_is_a_hit_and_the_hit_is_a_fresh_object() -> None:
    cache, view = setup()
    term = Terminal()
    first = copy.deepcopy(await cache(call(view), term))
    ctx = call(view)
    second = await cache(ctx, term)
    assert term.calls == 1 and ctx.stats.cache == "hit" and second == first
    second["result"]["content"].clear()  # whoever mutates what it was served does not change the entry
    assert (await cache(call(view), term)) == first


async def test_long_arguments_are_keyed_by_a_digest_and_counted() -> None:
    cache, view = setup()
    term = Terminal()
    await cache(call(view, args={"blob": "x" * 100_000}), term)
    assert cache.store.bytes < 1_000  # the key holds a digest, not the 100 kB of arguments
    await cache(call(view, args={"blob": "x" * 100_000}), term)
    await cache(call(view, args={"blob": "x" * 99_999 + "y"}), term)
    assert term.calls == 2


async def test_disabled_the_policy_looks_nothing_up() -> None:
    cache, view = setup()
    cache.enabled = False
    term = Terminal()
    ctx = call(view)
    await cache(ctx, term)
    await cache(call(view), term)
    assert term.calls == 2 and ctx.stats.cache is None and len(cache.store) == 0


async def test_mrtr_rounds_and_input_required_results_are_never_cached() -> None:
    cache, view = setup()
    term = Terminal()
    await cache(call(view, inputResponses={"k": {}}), term)
    await cache(call(view, inputResponses={"k": {}}), term)
    assert term.calls == 2
    asking = Terminal({"resultType": "input_required", "inputRequests": {}})
    await cache(call(view, args={"other": 1}), asking)
    await cache(call(view, args={"other": 1}), asking)
    assert asking.calls == 2


async def test_a_tool_that_is_not_read_only_is_cached_only_when_configured() -> None:
    cache, view = setup()
    term = Terminal()
    await cache(call(view, "write"), term)
    await cache(call(view, "write"), term)
    assert term.calls == 2
    listed, view = setup(tools={"up.wr*": {"ttl_ms": 1000}, "up.search": {"ttl_ms": 0}})
    term = Terminal()
    await listed(call(view, "write"), term)
    await listed(call(view, "write"), term)
    assert term.calls == 1  # listed (by glob): cached
    await listed(call(view, "search"), term)
    await listed(call(view, "search"), term)
    assert term.calls == 3  # ttl_ms: 0 excludes a read-only tool


async def test_an_invalidation_during_the_call_keeps_its_reply_out_of_the_cache() -> None:
    cache, view = setup()
    term = Terminal()
    term.during = lambda: cache.on_upstream_notification("up", "notifications/tools/list_changed", {})
    await cache(call(view), term)
    term.during = None
    await cache(call(view), term)
    await cache(call(view), term)
    assert term.calls == 2  # the first reply was computed before the change: not served


async def test_an_upstream_ttl_hint_of_zero_or_garbage_is_not_cached() -> None:
    cache, _ = setup()
    assert cache._ttl(None, (0, "private")) == 0
    assert cache._ttl(None, ("soon", None)) == 0
    assert cache._ttl(None, (True, None)) == 0
    assert cache._ttl(None, (5_000, "public")) == 5_000
    assert cache._ttl(1_000, (5_000, "public")) == 1_000  # the tool's ttl_ms caps the upstream's
    assert cache._ttl(None, None) == 30_000  # no hint: the default
