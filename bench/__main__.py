"""``python -m bench run ...``: the Stile benchmark harness (see bench/README.md)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from bench.procs import BENCH, REPO
from bench.scenarios import SCENARIOS
from bench.targets import PEERS, TARGETS


def _ints(text: str) -> list[int]:
    vals = [int(x) for x in text.split(",") if x.strip()]
    if not vals or any(v < 1 or v > 4096 for v in vals):
        raise argparse.ArgumentTypeError("concurrency levels must be 1..4096")
    return vals


def _names(choices: list[str]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        names = [x.strip() for x in text.split(",") if x.strip()]
        bad = [n for n in names if n not in choices]
        if bad:
            raise argparse.ArgumentTypeError(f"unknown {bad}; choose from {', '.join(choices)}")
        return names

    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description="Stile benchmark harness")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run scenarios against targets and write results")
    r.add_argument("--scenario", type=_names([*SCENARIOS, "all"]), default=["call-small"],
                   help=f"comma list of {', '.join(SCENARIOS)} or all (default call-small)")  # fmt: skip
    r.add_argument("--era", choices=["legacy", "modern", "both"], default="both")
    r.add_argument("--concurrency", type=_ints, default=[1, 8, 32, 128], help="comma list (default 1,8,32,128)")
    r.add_argument("--duration", type=float, default=5.0, help="measured seconds per point (default 5)")
    r.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each point (default 1)")
    r.add_argument("--repeats", type=int, default=3, help="repeats per point; medians + min-max reported (default 3)")
    r.add_argument("--targets", type=_names(list(TARGETS)), default=["direct", "stile"],
                   help=f"comma list of {', '.join(TARGETS)} (default direct,stile)")  # fmt: skip
    r.add_argument("--peers", type=_names(list(PEERS)), default=[],
                   help=f"comma list of {', '.join(PEERS)} (installed into bench/.peers/)")  # fmt: skip
    r.add_argument("--upstream", choices=["fast", "sdk"], default="fast",
                   help="fast = bench/upstream_fast.py (default); sdk = official MCPServer")  # fmt: skip
    r.add_argument("--policies", choices=["off", "on"], default="off",
                   help="Stile policy stack: on = API key + role + CEL rule")  # fmt: skip
    r.add_argument("--observe", choices=["default", "off", "trace"], default="default",
                   help="Stile observability: default = metrics + audit to SQLite; off = no audit; "
                        "trace = default + OpenTelemetry spans exported to a local collector")  # fmt: skip
    r.add_argument("--client", choices=["raw", "aiohttp"], default="raw",
                   help="load generator HTTP client (default raw: see README for why)")  # fmt: skip
    r.add_argument("--pin", choices=["auto", "off"], default="auto", help="taskset pinning (auto: needs >= 2 cores)")
    r.add_argument("--profile", action="store_true", help="py-spy flame graph of each non-direct target under load")
    r.add_argument("--stages", action="store_true",
                   help="per-stage CPU µs per call of each non-direct target (py-spy raw stacks, bench/stages.py)")
    r.add_argument("--smoke", action="store_true", help="seconds-long CI check: 1 repeat, concurrency 1,4, 1 s")
    r.add_argument("--results-dir", default=str(BENCH / "results"))
    r.add_argument("--stile-exe", default=str(REPO / ".venv" / "bin" / "stile"))
    rep = sub.add_parser("report", help="re-render latest.md/latest.png from a results JSON")
    rep.add_argument("json", help="bench/results/<timestamp>.json")
    fz = sub.add_parser("fuzz-cel", help="differential fuzzing of the rules engine against CEL (bench/cel_fuzz.py)")
    fz.add_argument("--cases", type=int, default=1_000_000, help="(expression, input) pairs (default 1,000,000)")
    fz.add_argument("--seconds", type=float, default=None, help="stop after this many seconds (default: no limit)")
    fz.add_argument("--seed", type=int, default=None, help="random seed (default: from the clock, printed)")
    from bench.fuzz_frontdoor import add_parser as add_fuzz_frontdoor

    add_fuzz_frontdoor(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    if args.cmd == "fuzz-cel":
        import time

        from bench.cel_fuzz import run as fuzz

        if args.cases < 1 or (args.seconds is not None and args.seconds <= 0):
            print("--cases must be >= 1 and --seconds > 0", file=sys.stderr)
            return 2
        seed = args.seed if args.seed is not None else time.time_ns() % 2**32
        print(f"fuzz-cel: seed {seed}, up to {args.cases:,} cases" +
              (f" or {args.seconds:g} s" if args.seconds else ""), flush=True)
        return fuzz(args.cases, args.seconds, seed)
    if args.cmd == "fuzz-frontdoor":
        from bench.fuzz_frontdoor import main as fuzz_frontdoor

        return fuzz_frontdoor(args)
    if args.cmd == "report":
        from pathlib import Path

        from bench.report import rerender

        return rerender(Path(args.json))
    if args.smoke:
        args.repeats, args.concurrency, args.duration, args.warmup = 1, [1, 4], 1.0, 0.3
    args.scenarios = list(SCENARIOS) if "all" in args.scenario else args.scenario
    if not (1 <= args.repeats <= 50 and 0 < args.duration <= 600 and 0 <= args.warmup <= 60):
        print("repeats must be 1..50, duration 0..600 s, warmup 0..60 s", file=sys.stderr)
        return 2
    from bench import runner

    return runner.run(args)


if __name__ == "__main__":
    sys.exit(main())
