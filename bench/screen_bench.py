"""The screens (`policies.screen`): detection on the labelled corpus, and what the policy costs per call.

Detection: every item of `bench/screen_corpus/*.jsonl` (text, label, source) is scored by the built-in rule
set (`stile.policies.screen_rules.scan`) and by a plain keyword list (`KEYWORDS`, the baseline: a substring
match of phrases keyword scanners use); recall on the poisoned/injected items, false-positive rate on the
benign/clean ones, per kind (tool descriptions, tool results) and split: `tuned` (descriptions.jsonl,
results.jsonl: the rules were adjusted while looking at them) and `holdout` (holdout.jsonl: written after
the rules were frozen, measured once, never tuned against). `--misses` prints what each one got wrong.

Cost: one `await screen(ctx, call_next)` with `results: block` on a short clean result, against a bare
`await call_next(ctx)` (the terminal answers at once), and the policy with nothing configured. p50/p90 in µs.

Run: ``PYTHONPATH=src python -m bench.screen_bench [--calls 20000] [--misses]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path

from stile.config.model import GatewayConfig
from stile.core.catalog import Inventory, View, build_view
from stile.core.context import CallContext, Principal, Reply
from stile.policies.screen import Screen, ScreenConfig
from stile.policies.screen_rules import scan

CORPUS = Path(__file__).parent / "screen_corpus"
POSITIVE = frozenset({"poisoned", "injected"})
# the baseline: phrases a keyword scanner looks for, matched as lowercase substrings
KEYWORDS = ("ignore previous instructions", "ignore all previous instructions", "disregard previous instructions",
            "system prompt", "<important>", "do not tell the user", "don't tell the user", "jailbreak",
            "exfiltrate", "id_rsa", "~/.ssh", "/etc/passwd", "api_key", "| sh", "you are now", "developer mode")
TOOL = {"name": "weather", "description": "Get the weather for a city.", "inputSchema": {"type": "object"}}
SHORT: Reply = {"result": {"content": [{"type": "text", "text": "The weather in Paris is 21C and sunny."}],
                           "isError": False}}
ISSUE: Reply = {"result": {"content": [{"type": "text", "text": '{"id": 1234, "title": "Fix login bug", '
                                        '"state": "open", "user": "octocat"}'}], "isError": False}}


def keyword_hit(text: str) -> bool:
    low = text.lower()
    return any(k in low for k in KEYWORDS)


def load() -> list[dict[str, str]]:
    rows = []
    for path in sorted(CORPUS.glob("*.jsonl")):
        rows.extend(json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    return rows


def detection(show_misses: bool) -> None:
    rows = load()
    print(f"{'set':24} {'detector':10} {'recall':>14} {'false positives':>18}")
    sets = [(f"{kind}s ({split})", kind, split) for split in ("tuned", "holdout") for kind in ("description", "result")]
    for label, kind, split in sets:
        items = [r for r in rows if r["kind"] == kind and r.get("split", "tuned") == split]
        if not items:
            continue
        pos = [r for r in items if r["label"] in POSITIVE]
        neg = [r for r in items if r["label"] not in POSITIVE]
        detectors: dict[str, Callable[[str], bool]] = {
            "keywords": keyword_hit, "stile": lambda t, k=kind: scan(t, k).flagged}  # type: ignore[misc]
        for name, hit in detectors.items():
            tp = sum(hit(r["text"]) for r in pos)
            fp = sum(hit(r["text"]) for r in neg)
            print(f"{label:24} {name:10} {tp:>3}/{len(pos):<3} {tp / len(pos):6.1%} {fp:>4}/{len(neg):<4} "
                  f"{fp / len(neg):6.1%}")
            if show_misses:
                for r in pos:
                    if not hit(r["text"]):
                        print(f"    missed: {r['text'][:90]!r}  [{r['source'][:60]}]")
                for r in neg:
                    if hit(r["text"]):
                        print(f"    false+: {r['text'][:90]!r}  [{r['source'][:60]}] {scan(r['text'], kind)}")


class _Views:
    def __init__(self, view: View) -> None:
        self._view = view

    def view(self, name: str) -> View | None:
        return self._view

    async def ensure_discovered(self, view: View) -> View:
        return view


def _setup(cfg: ScreenConfig) -> tuple[Screen, View]:
    gw = GatewayConfig.model_validate({"upstreams": {"up": {"url": "http://127.0.0.1:1/mcp"}},
                                       "virtual_servers": {"vs": {"upstreams": ["up"], "prefix": "never"}}})
    view = build_view("vs", gw.virtual_servers["vs"], gw, {"up": Inventory(tools=[TOOL], ok=True)})
    return Screen(cfg, _Views(view), ["vs"]), view


async def _time(run: Callable[[CallContext], Awaitable[Reply]], ctx: CallContext, calls: int) -> list[float]:
    out = []
    for _ in range(calls):
        start = time.perf_counter_ns()
        await run(ctx)
        out.append((time.perf_counter_ns() - start) / 1000)
    return out


async def cost(calls: int) -> None:
    results: dict[str, list[float]] = {}
    for _ in range(3):  # interleaved repeats; the best p50 of each
        off, view = _setup(ScreenConfig())
        on, _ = _setup(ScreenConfig(descriptions="block", results="block"))
        ctx = CallContext("vs", "tools/call", {"name": "weather", "arguments": {"city": "Paris"}}, 1, "modern",
                          "2026-07-28", principal=Principal(agent="bench", method="api_key"), view=view)

        async def short(c: CallContext) -> Reply:
            return SHORT

        async def issue(c: CallContext) -> Reply:
            return ISSUE

        runs: dict[str, tuple[Callable[[CallContext], Awaitable[Reply]]]] = {
            "baseline (call_next only)": (short,),
            "nothing configured": (partial(off.__call__, call_next=short),),
            "block, 38-char clean text": (partial(on.__call__, call_next=short),),
            "block, 74-char clean JSON": (partial(on.__call__, call_next=issue),),
        }
        for name, (run,) in runs.items():
            samples = await _time(run, ctx, calls)
            prev = results.get(name)
            if prev is None or statistics.median(samples) < statistics.median(prev):
                results[name] = samples
    base = statistics.median(results["baseline (call_next only)"])
    print(f"\n{'case':32} {'p50 µs':>8} {'p90 µs':>8} {'p50 added µs':>13}")
    for name, samples in results.items():
        q = statistics.quantiles(samples, n=10)
        p50 = statistics.median(samples)
        print(f"{name:32} {p50:8.2f} {q[8]:8.2f} {p50 - base:13.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--misses", action="store_true", help="print the items each detector got wrong")
    args = parser.parse_args()
    detection(args.misses)
    asyncio.run(cost(args.calls))
