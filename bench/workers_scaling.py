"""`stile serve --workers N` scaling: calls/s and gateway CPU µs per call (supervisor + workers summed).

    .venv/bin/python -m bench.workers_scaling --workers 1,2 --concurrency 32 --duration 5

Starts bench/upstream_fast.py, then for each worker count a `stile serve` (default config: audit to SQLite,
metrics on, anonymous virtual server), runs bench/load.py (modern era, call-small) against it and reads the
CPU time of the whole gateway process tree from psutil. The "scaling" line compares N workers' calls per
gateway CPU-second to one worker's (issue #12 asks for >= 90%). Short runs only; a busy machine skews both.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import yaml

from tests.support import free_port, ready_process, wait_http

PY = sys.executable


def tree_cpu(pid: int) -> float:
    proc = psutil.Process(pid)
    total = 0.0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            t = p.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system
    return total


def measure(upstream: str, workers: int, concurrency: int, duration: float, tmp: Path) -> dict[str, Any]:
    cfg = {"upstreams": {"fast": {"url": upstream}},  # as bench/targets.py builds it for call-small
           "virtual_servers": {"bench": {"upstreams": ["fast"], "auth": "none", "prefix": "never"}}}
    path = tmp / f"stile-{workers}.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    port = free_port()
    proc = subprocess.Popen([PY, "-m", "stile", "serve", "--config", str(path), "--port", str(port),
                             "--workers", str(workers), "--log-level", "warning"], cwd=tmp,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", proc, deadline_s=60)
        url = f"http://127.0.0.1:{port}/mcp/bench"
        subprocess.run([PY, "-m", "bench.load", "--url", url, "--concurrency", str(concurrency), "--duration", "1",
                        "--warmup", "0.5"], check=True, capture_output=True)  # every worker warm
        before = tree_cpu(proc.pid)
        began = time.monotonic()
        out = subprocess.run([PY, "-m", "bench.load", "--url", url, "--concurrency", str(concurrency),
                              "--duration", str(duration), "--warmup", "0"], check=True, capture_output=True,
                             text=True)
        wall = time.monotonic() - began
        cpu = tree_cpu(proc.pid) - before
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    calls = int(result.get("ok") or 0)
    if not calls:
        raise SystemExit(f"no call succeeded: {result.get('errors')} {result.get('error_samples', [])[:2]}")
    return {"workers": workers, "calls": calls, "calls_per_s": float(result.get("rps") or 0.0),
            "gateway_cpu_s": round(cpu, 2), "wall_s": round(wall, 2),
            "cpu_us_per_call": round(cpu / calls * 1e6, 1) if calls else None, "load": result}


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.workers_scaling")
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--duration", type=float, default=5.0)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="stile-workers-bench-") as tmp_name, \
            ready_process([PY, "-m", "bench.upstream_fast", "--port", "0"], "upstream") as up_port:
        upstream = f"http://127.0.0.1:{up_port}/mcp"
        for n in (int(x) for x in args.workers.split(",")):
            rows.append(measure(upstream, n, args.concurrency, args.duration, Path(tmp_name)))
    for row in rows:
        print(f"workers={row['workers']}: {row['calls_per_s']:.0f} calls/s, {row['cpu_us_per_call']} µs gateway CPU "
              f"per call ({row['gateway_cpu_s']} CPU-s over {row['wall_s']} s)")
    base = rows[0]
    for row in rows[1:]:
        if base["cpu_us_per_call"] and row["cpu_us_per_call"]:
            print(f"scaling {row['workers']} vs {base['workers']} worker(s): calls per gateway CPU-second "
                  f"{base['cpu_us_per_call'] / row['cpu_us_per_call']:.0%} of one worker's")
    return 0


if __name__ == "__main__":
    sys.exit(main())
