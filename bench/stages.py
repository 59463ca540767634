"""Per-stage CPU breakdown of the gateway from py-spy's collapsed stacks (``--profile``).

py-spy samples only threads that are running (idle samples are dropped), so a stage's share of the
samples is its share of the process's CPU time; times the measured CPU seconds per call it gives
µs per call per stage. A sample belongs to the stage of the innermost frame that names one (walking from
the leaf towards the root), so a stdlib or C call (``json``, ``hashlib``, ``sqlite3``) counts for the Stile
module that made it; a stack without Stile frames goes by the first of ``FALLBACK`` it has (SQLAlchemy's
greenlet switch hides the caller from py-spy). Samples with no stage frame (the event loop itself, uvloop's
C callbacks, idle selectors that py-spy still saw running) land in ``loop/rest``.

Only the main thread (the event loop) counts: py-spy is run with ``--threads`` and samples of other threads
(aiosqlite's connection threads, ``to_thread`` workers) are left out, because py-spy takes those threads for
busy while they block in ``queue.get`` (measured from ``/proc/<pid>/task/*/stat`` under the bench: main thread
55 % of a core, every other thread together ~2 %, while py-spy gave them a third of the samples). The
µs/call column is therefore the main thread's share times the process's CPU per call.

Also runnable on a saved file: ``python -m bench.stages FILE.txt [--cpu-us 290]``.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

# (stage, path fragment of the frame's file) - first match wins, so list specific fragments first
RULES: tuple[tuple[str, str], ...] = (
    ("audit", "stile/observe/audit"),
    ("audit", "stile/observe/spool"),
    ("audit", "sqlite3"),
    ("metrics", "stile/observe/metrics"),
    ("metrics", "prometheus_client"),
    ("tracing/observers", "stile/observe/"),
    ("authn", "stile/identity/"),
    ("authn", "stile/stores/keys"),
    ("authn", "stile/frontends/admin"),
    ("ratelimit/quota", "stile/policies/ratelimit"),
    ("ratelimit/quota", "stile/policies/quota"),
    ("ratelimit/quota", "stile/policies/gcra"),
    ("ratelimit/quota", "stile/stores/quotas"),
    ("rules (CEL)", "stile/policies/rules"),
    ("rules (CEL)", "stile/policies/cel"),
    ("chain/policies", "stile/policies/"),
    ("chain/policies", "stile/core/pipeline"),
    ("upstream client", "stile/upstreams/"),
    ("router", "stile/core/router"),
    ("router", "stile/core/forward"),
    ("router", "stile/core/catalog"),
    ("router", "stile/core/naming"),
    ("router", "stile/core/results"),
    ("sessions", "stile/core/session"),
    ("sessions", "stile/stores/revocations"),
    ("http server (uvicorn)", "stile/frontends/protocol"),
    ("http server (uvicorn)", "stile/barrier"),
    ("frontend (parse, reply)", "stile/frontends/channel"),
    ("frontend (parse, reply)", "stile/frontends/"),
    ("frontend (parse, reply)", "stile/wire/"),
    ("frontend (parse, reply)", "stile/core/context"),
    ("frontend (parse, reply)", "stile/core/gateway"),
)
# when no frame of the stack is Stile's (py-spy loses the coroutine frames above a greenlet switch)
FALLBACK: tuple[tuple[str, str], ...] = (
    ("SQL (caller's frames lost)", "sqlalchemy/"),
    ("SQL (caller's frames lost)", "aiosqlite/"),
    ("loop/rest", "uvicorn/server.py"),
    ("loop/rest", "uvicorn/_compat"),
    ("http server (uvicorn)", "uvicorn/"),
)
STAGES: tuple[str, ...] = (*dict.fromkeys(s for s, _ in RULES + FALLBACK if s != "loop/rest"), "loop/rest")
_FRAME_FILE = re.compile(r"\(([^():]+)(?::\d+)?\)\s*$")


def stage_of(frames: list[str]) -> str:
    """The stage of one stack (root first, as py-spy writes them)."""
    paths = []
    for frame in reversed(frames):
        m = _FRAME_FILE.search(frame)
        paths.append(m.group(1) if m else frame)
    for rules in (RULES, FALLBACK):
        for path in paths:
            for stage, fragment in rules:
                if fragment in path:
                    return stage
    return "loop/rest"


def count(collapsed: str) -> Counter[str]:
    """Samples per stage from py-spy ``--format raw`` output (``frame;frame;... N`` per line)."""
    out: Counter[str] = Counter()
    for line in collapsed.splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        frames = stack.split(";")
        thread = next((f for f in frames if f.startswith("thread ")), None)
        if thread is not None and not thread.rstrip().endswith("MainThread"):
            out["(other threads, left out)"] += int(n)
            continue
        frames = [f for f in frames if not f.startswith(("process ", "thread "))]
        out[stage_of(frames)] += int(n)
    return out


def breakdown(collapsed: str, cpu_us_per_call: float | None) -> list[dict[str, float | str | None]]:
    """One row per stage: samples, share, and µs per call when the CPU per call is known."""
    counts = count(collapsed)
    total = sum(v for k, v in counts.items() if k in STAGES) or 1
    rows: list[dict[str, float | str | None]] = []
    for stage in STAGES:
        share = counts.get(stage, 0) / total
        rows.append({"stage": stage, "samples": counts.get(stage, 0), "share": share,
                     "us_per_call": None if cpu_us_per_call is None else share * cpu_us_per_call})
    return rows


def markdown(rows: list[dict[str, float | str | None]], cpu_us_per_call: float | None) -> str:
    head = f"CPU per call {cpu_us_per_call:.0f} µs" if cpu_us_per_call is not None else "CPU per call unknown"
    lines = [f"stage breakdown ({head}):", "", "| stage | samples | share | µs/call |", "|---|--:|--:|--:|"]
    for r in rows:
        us = r["us_per_call"]
        lines.append(f"| {r['stage']} | {r['samples']} | {float(r['share'] or 0) * 100:.1f} % | "
                     f"{'' if us is None else f'{float(us):.1f}'} |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.stages")
    p.add_argument("file", help="py-spy record --format raw output")
    p.add_argument("--cpu-us", type=float, default=None, help="gateway CPU µs per call measured in the same run")
    a = p.parse_args()
    text = Path(a.file).read_text(encoding="utf-8", errors="replace")
    print(markdown(breakdown(text, a.cpu_us), a.cpu_us))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
