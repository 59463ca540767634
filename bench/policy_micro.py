"""Micro benchmark: µs per call through the ratelimit and quota policies when they do not fire.

`python -m bench.policy_micro [--calls 200000]` builds the two policies in process (in-memory limiter,
quota counters in memory: no state store) and times `policy(ctx, terminal)` against calling the terminal
directly, in batches of 100 calls; it prints the median and p90 of the per-call cost of each batch.
Cases: nothing configured (the factory leaves the policy out of the chain: no cost at all), one agent limit
(every request), agent + tool limits on a `tools/call`, and two quotas (agent calls, tool cost units).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any

from stile.core.catalog import Target
from stile.core.context import CallContext, Principal, Reply
from stile.policies.quota import Quota, QuotaConfig
from stile.policies.ratelimit import RateLimit, RateLimitConfig

BATCH = 100


class _Views:
    tools = {"gh__create": Target("github", "create")}

    def view(self, name: str) -> Any:
        return SimpleNamespace(tool_index=self.tools)

    async def ensure_discovered(self, view: Any) -> Any:
        return view


async def _terminal(ctx: CallContext) -> Reply:
    return {"result": {}}


async def _time(run: Callable[[], Awaitable[Reply]], calls: int) -> list[float]:
    per_call: list[float] = []
    for _ in range(calls // BATCH):
        start = time.perf_counter()
        for _ in range(BATCH):
            await run()
        per_call.append((time.perf_counter() - start) / BATCH * 1e6)
    return per_call


async def main(calls: int) -> None:
    ctx = CallContext("main", "tools/call", {"name": "gh__create", "arguments": {}}, 1, "modern", "2026-07-28",
                      principal=Principal(agent="bench", user="ann", method="api_key"))
    huge = "1000000000/s"
    agent_only = RateLimit(RateLimitConfig.model_validate({"limits": [{"key": "agent", "rate": huge}]}),
                           _Views(), ["main"])  # type: ignore[arg-type]
    agent_tool = RateLimit(RateLimitConfig.model_validate({"limits": [
        {"key": "agent", "rate": huge}, {"key": "tool", "rate": huge}, {"key": "agent", "rate": huge,
                                                                        "tools": ["github.*"]}]}),
        _Views(), ["main"])  # type: ignore[arg-type]
    quota = Quota(QuotaConfig.model_validate({"quotas": [
        {"name": "daily", "key": "agent", "limit": 1e15}, {"name": "cost", "key": "tool", "limit": 1e15,
                                                           "unit": "cost", "period": "month"}]}),
        _Views(), {"github.*": 2}, None, None)  # type: ignore[arg-type]
    cases: dict[str, Callable[[], Awaitable[Reply]]] = {
        "terminal alone (baseline)": lambda: _terminal(ctx),
        "ratelimit: 1 agent limit": lambda: agent_only(ctx, _terminal),
        "ratelimit: agent + tool + agent-on-tools": lambda: agent_tool(ctx, _terminal),
        "quota: agent calls + tool cost": lambda: quota(ctx, _terminal),
    }
    await _time(cases["terminal alone (baseline)"], calls // 4)  # warm up
    base: float | None = None
    print(f"{'case':45} {'p50 µs/call':>12} {'p90':>8} {'p50 over baseline':>18}")
    for name, run in cases.items():
        samples = sorted(await _time(run, calls))
        p50, p90 = statistics.median(samples), samples[int(len(samples) * 0.9)]
        base = p50 if base is None else base
        print(f"{name:45} {p50:12.2f} {p90:8.2f} {p50 - base:18.2f}")
    print("nothing configured: the factories return None, the policies are not in the chain (0 µs)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--calls", type=int, default=200_000)
    asyncio.run(main(parser.parse_args().calls))
