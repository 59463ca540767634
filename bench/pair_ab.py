"""A/B two source trees of Stile side by side, in short interleaved bursts (for a shared, noisy machine).

Both gateways run at once (same pinned core, same fast upstream, same generated config as `--policies on`);
each round loads A then B (the order flips every round) for `--duration` seconds; the figure is the CPU per
call of each burst and, per round, B's CPU per call over A's. Neighbours' load changes slowly compared to a
burst, so the per-round ratio is far steadier than two separate `bench run`s.

    PYTHONPATH=. python -m bench.pair_ab --a /tmp/base/src --b src --rounds 8 --concurrency 1,32 --era legacy
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path
from typing import Any

from bench.procs import Pinning, Procs
from bench.runner import load_once
from bench.scenarios import SCENARIOS
from bench.targets import Env, Stile, UpstreamPool


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.pair_ab")
    p.add_argument("--a", required=True, help="src/ directory of tree A (the baseline)")
    p.add_argument("--b", required=True, help="src/ directory of tree B")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--duration", type=float, default=2.0)
    p.add_argument("--warmup", type=float, default=0.5)
    p.add_argument("--concurrency", default="1,32")
    p.add_argument("--era", choices=["legacy", "modern"], default="legacy")
    p.add_argument("--stile-exe", required=True)
    a = p.parse_args(argv)
    scn = SCENARIOS["call-small"]
    procs = Procs()
    workdir = Path(tempfile.mkdtemp(prefix="stile-pair-"))
    pin = Pinning.auto("auto")
    targets: dict[str, Stile] = {}
    pool = None
    try:
        for label, src in (("A", a.a), ("B", a.b)):
            env = Env(procs=procs, pin=pin, workdir=workdir / label, policies="on", stile_exe=Path(a.stile_exe))
            env.workdir.mkdir(parents=True)
            pool = pool or UpstreamPool(env)
            os.environ["PYTHONPATH"] = os.pathsep.join([str(Path(src).resolve()), str(Path.cwd())])
            t = Stile(env)
            t.start(scn, pool)
            targets[label] = t
        for conc in [int(c) for c in a.concurrency.split(",")]:
            rows: dict[str, list[float]] = {"A": [], "B": []}
            ratios: list[float] = []
            for r in range(a.rounds):
                got: dict[str, float] = {}
                for label in ("A", "B") if r % 2 == 0 else ("B", "A"):
                    res: dict[str, Any] = load_once(targets[label], scn, a.era, conc, a.duration, a.warmup, "raw",
                                                    pin)
                    cpu = res.get("cpu_s_per_1k")
                    if cpu is None or not res.get("ok"):
                        raise SystemExit(f"round {r} {label}: {res.get('fatal') or res.get('error_samples')}")
                    got[label] = float(cpu) * 1000
                    rows[label].append(got[label])
                ratios.append(got["B"] / got["A"])
                print(f"c={conc} round {r}: A {got['A']:.0f} µs/call, B {got['B']:.0f} µs/call, B/A {ratios[-1]:.3f}",
                      flush=True)
            print(f"c={conc} {a.era}: A median {statistics.median(rows['A']):.0f} µs/call, B median "
                  f"{statistics.median(rows['B']):.0f} µs/call, B/A per round median {statistics.median(ratios):.3f} "
                  f"(min {min(ratios):.3f}, max {max(ratios):.3f})", flush=True)
    finally:
        for t in targets.values():
            t.stop()
        if pool is not None:
            pool.stop()
        procs.stop_all()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
