"""The screens (`policies.screen`): detection on the labelled corpus, and what the policy costs per call.

Detection: every item of `bench/screen_corpus/*.jsonl` (text, label, source) is scored by the built-in rule
set (`stile.policies.screen_rules.scan`) and by a plain keyword list (`KEYWORDS`, the baseline: a substring
match of phrases keyword scanners use); recall on the poisoned/injected items, false-positive rate on the
benign/clean ones, per kind (tool descriptions, tool results) and split: `tuned` (descriptions.jsonl,
results.jsonl: the rules were adjusted while looking at them) and `holdout` (holdout.jsonl: written after
the rules were frozen, measured once, never tuned against). `--misses` prints what each one got wrong.

Cost: one `await screen(ctx, call_next)` with `results: block` on a short clean result, against a bare
`await call_next(ctx)` (the terminal answers at once), and the policy with nothing configured; and one
`await flows(ctx, call_next)` (`policies.flows`, the trifecta flow, declarative and CEL) for an unlabelled
and a labelled tool in a legacy session. p50/p90 in µs.

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
from stile.policies.flows import Flows, FlowsConfig
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


TRAIN_SPLITS = frozenset({"tuned", "v1-holdout", "train"})  # what the rules and weights may be fitted on


def load() -> list[dict[str, str]]:
    rows = []
    for path in sorted(CORPUS.glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                row["file"] = path.stem
                row["part"] = "train" if row.get("split", "tuned") in TRAIN_SPLITS else "holdout"
                rows.append(row)
    return rows


def _line(label: str, name: str, items: list[dict[str, str]], hit: Callable[[str], bool],
          show_misses: bool, kind: str) -> None:
    pos = [r for r in items if r["label"] in POSITIVE]
    neg = [r for r in items if r["label"] not in POSITIVE]
    tp = sum(hit(r["text"]) for r in pos)
    fp = sum(hit(r["text"]) for r in neg)
    recall = f"{tp:>4}/{len(pos):<4} {tp / len(pos):6.1%}" if pos else f"{'-':>16}"
    fpr = f"{fp:>4}/{len(neg):<5} {fp / len(neg):6.2%}" if neg else f"{'-':>17}"
    print(f"{label:40} {name:9} {recall} {fpr}")
    if show_misses:
        for r in pos:
            if not hit(r["text"]):
                print(f"    missed: {r['text'][:90]!r}  [{r['source'][:60]}]")
        for r in neg:
            if hit(r["text"]):
                print(f"    false+: {r['text'][:90]!r}  [{r['source'][:60]}] {scan(r['text'], kind)}")  # type: ignore[arg-type]


def yara_detector(rules_dir: Path) -> Callable[[str], bool]:
    """A YARA-rule scanner as a baseline: every *.yara / *.yar file of `rules_dir`, a hit when any rule matches
    (needs `pip install yara-python`; e.g. the rules of cisco-ai-defense/mcp-scanner, mcpscanner/data/yara_rules)."""
    import yara  # type: ignore[import-not-found]  # optional: only this baseline needs it

    paths = {p.name: str(p) for p in sorted(rules_dir.iterdir()) if p.suffix in (".yara", ".yar")}
    if not paths:
        raise SystemExit(f"no .yara or .yar files in {rules_dir}")
    compiled = yara.compile(filepaths=paths)

    def hit(text: str) -> bool:
        return bool(compiled.match(data=text.encode("utf-8")))
    return hit


def detection(show_misses: bool, parts: tuple[str, ...] = ("train", "holdout"),
              extra: dict[str, Callable[[str], bool]] | None = None, per_file: bool = True) -> None:
    """Recall and false-positive rate per kind and split, overall and per corpus file.

    `--misses` prints misses of the train split only: the held-out split is for measuring, not for reading.
    """
    rows = load()
    print(f"{'set':40} {'detector':9} {'recall':>16} {'false positives':>17}")
    for part in parts:
        for kind in ("description", "result"):
            items = [r for r in rows if r["kind"] == kind and r["part"] == part]
            if not items:
                continue
            groups = [(f"{kind}s {part}: all", items)]
            files = sorted({r["file"] for r in items})
            if len(files) > 1 and per_file:
                groups += [(f"{kind}s {part}: {f}", [r for r in items if r["file"] == f]) for f in files]
            for label, group in groups:
                detectors: dict[str, Callable[[str], bool]] = {
                    "keywords": keyword_hit, **(extra or {}),
                    "stile": lambda t, k=kind: scan(t, k).flagged}  # type: ignore[misc]
                for name, hit in detectors.items():
                    _line(label, name, group, hit, show_misses and part == "train" and name == "stile", kind)


class _Views:
    def __init__(self, view: View) -> None:
        self._view = view

    def view(self, name: str) -> View | None:
        return self._view

    async def ensure_discovered(self, view: View) -> View:
        return view


TRIFECTA = {"name": "trifecta", "deny_when": {"call_has": ["egress"], "seen_all": ["reads_private", "untrusted"]}}
CEL_TRIFECTA = {"name": "trifecta", "deny_when": {
    "cel": '"egress" in tool.labels && "reads_private" in session.labels_seen && "untrusted" in session.labels_seen'}}


def _view(tools: list[dict[str, object]]) -> View:
    gw = GatewayConfig.model_validate({"upstreams": {"up": {"url": "http://127.0.0.1:1/mcp"}},
                                       "virtual_servers": {"vs": {"upstreams": ["up"], "prefix": "never"}}})
    return build_view("vs", gw.virtual_servers["vs"], gw, {"up": Inventory(tools=tools, ok=True)})


def _setup(cfg: ScreenConfig) -> tuple[Screen, View]:
    view = _view([TOOL])
    return Screen(cfg, _Views(view), ["vs"]), view


def _session_call(view: View, tool: str) -> CallContext:
    return CallContext("vs", "tools/call", {"name": tool, "arguments": {}}, 1, "legacy", "2025-11-25",
                       principal=Principal(agent="bench", method="api_key"), session_id="s1", view=view)


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

        fview = _view([{"name": "read"}, {"name": "plain"}])
        labels = {"up.read": ["reads_private"], "up.send": ["egress"]}
        declarative = Flows(FlowsConfig.model_validate({"labels": labels, "flows": [TRIFECTA]}), _Views(fview))
        by_cel = Flows(FlowsConfig.model_validate({"labels": labels, "flows": [CEL_TRIFECTA]}), _Views(fview))
        plain = _session_call(fview, "plain")
        read = _session_call(fview, "read")
        runs: dict[str, tuple[Callable[[CallContext], Awaitable[Reply]], CallContext]] = {
            "baseline (call_next only)": (short, ctx),
            "screen: nothing configured": (partial(off.__call__, call_next=short), ctx),
            "screen: block, 38-char clean": (partial(on.__call__, call_next=short), ctx),
            "screen: block, 74-char JSON": (partial(on.__call__, call_next=issue), ctx),
            "flows: unlabelled tool": (partial(declarative.__call__, call_next=short), plain),
            "flows: labelled, declarative": (partial(declarative.__call__, call_next=short), read),
            "flows: labelled, CEL": (partial(by_cel.__call__, call_next=short), read),
        }
        for name, (run, call) in runs.items():
            samples = await _time(run, call, calls)
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
    parser.add_argument("--misses", action="store_true", help="print what the screen got wrong (train split only)")
    parser.add_argument("--yara", type=Path, help="also score with the YARA rules in this directory (baseline)")
    parser.add_argument("--no-cost", action="store_true", help="detection only")
    args = parser.parse_args()
    detection(args.misses, extra={"yara": yara_detector(args.yara)} if args.yara else None)
    if args.no_cost:
        raise SystemExit(0)
    asyncio.run(cost(args.calls))
