"""Micro benchmark of the response cache policy (`policies.cache`): what it adds per call, in-process.

Measures one `await policy(ctx, call_next)` against a bare `await call_next(ctx)` (the terminal answers
at once), per call, for: the policy disabled, a miss (new arguments each call: key, lookup, store of the
reply), and a hit (the reply served from the store, parsed afresh). Prints p50/p90 in µs.

Run: ``PYTHONPATH=src python -m bench.cache_policy [--calls 20000]``
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from functools import partial

from stile.config.model import GatewayConfig
from stile.core.catalog import Inventory, View, build_view
from stile.core.context import CallContext, Principal, Reply
from stile.policies.cache import CacheConfig, ResponseCache

TOOL = {"name": "search", "description": "d", "inputSchema": {"type": "object"},
        "annotations": {"readOnlyHint": True}}
REPLY: Reply = {"result": {"content": [{"type": "text", "text": "a small answer of some sixty characters or so."}],
                           "isError": False}}


class _Views:
    def __init__(self, view: View) -> None:
        self._view = view

    def view(self, name: str) -> View | None:
        return self._view

    async def ensure_discovered(self, view: View) -> View:
        return view


def _setup(enabled: bool) -> tuple[ResponseCache, View]:
    cfg = GatewayConfig.model_validate({"upstreams": {"up": {"url": "http://127.0.0.1:1/mcp"}},
                                        "virtual_servers": {"vs": {"upstreams": ["up"], "prefix": "never"}}})
    view = build_view("vs", cfg.virtual_servers["vs"], cfg, {"up": Inventory(tools=[TOOL], ok=True)})
    return ResponseCache(CacheConfig(enabled=enabled, max_entries=1_000_000), _Views(view)), view


def _ctx(view: View, args: dict[str, object]) -> CallContext:
    return CallContext("vs", "tools/call", {"name": "search", "arguments": args}, 1, "modern", "2026-07-28",
                       principal=Principal(agent="bench", user="u1", roles=("reader",), method="api_key"), view=view)


async def _terminal(ctx: CallContext) -> Reply:
    return REPLY


async def _time(run: Callable[[CallContext], Awaitable[Reply]], ctxs: list[CallContext]) -> list[float]:
    out = []
    for ctx in ctxs:
        start = time.perf_counter_ns()
        await run(ctx)
        out.append((time.perf_counter_ns() - start) / 1000)
    return out


async def main(calls: int) -> None:
    results: dict[str, list[float]] = {}
    for _ in range(3):  # interleaved repeats; the best p50 of each
        disabled, view = _setup(False)
        enabled, _ = _setup(True)
        same = [_ctx(view, {"query": "q", "limit": 10}) for _ in range(calls)]
        fresh = [_ctx(view, {"query": f"q{i}", "limit": 10}) for i in range(calls)]
        await enabled(same[0], _terminal)  # the entry the hits read
        assert same[0].stats.cache == "miss" and len(enabled.store) == 1, "the benchmark call is not cacheable"
        runs = {
            "baseline (call_next only)": (_terminal, same),
            "disabled": (partial(disabled.__call__, call_next=_terminal), same),
            "miss (key + lookup + store)": (partial(enabled.__call__, call_next=_terminal), fresh),
            "hit": (partial(enabled.__call__, call_next=_terminal), same),
        }
        for name, (run, ctxs) in runs.items():
            samples = await _time(run, ctxs)
            prev = results.get(name)
            if prev is None or statistics.median(samples) < statistics.median(prev):
                results[name] = samples
    base = statistics.median(results["baseline (call_next only)"])
    print(f"{'case':32} {'p50 µs':>8} {'p90 µs':>8} {'p50 added µs':>13}")
    for name, samples in results.items():
        q = statistics.quantiles(samples, n=10)
        p50 = statistics.median(samples)
        print(f"{name:32} {p50:8.2f} {q[8]:8.2f} {p50 - base:13.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--calls", type=int, default=20_000)
    asyncio.run(main(parser.parse_args().calls))
