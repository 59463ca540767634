"""The benchmark harness runs end to end against the direct upstream and writes its results.

Timing is never asserted here: budgets are measured by `python -m bench`, not by tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_bench_smoke_against_direct_writes_results_json(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [
        sys.executable,
        "-m",
        "bench",
        "run",
        "--smoke",
        "--targets",
        "direct",
        "--results-dir",
        str(tmp_path),
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)

    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "DIRECT: ok" in proc.stdout
    assert "STILE: not requested" in proc.stdout
    (result_file,) = tmp_path.glob("*.json")
    doc = json.loads(result_file.read_text(encoding="utf-8"))
    assert {"schema", "meta", "config", "targets", "runs", "summary", "added", "profiles"} <= doc.keys()
    assert doc["targets"]["direct"]["status"] == "ok"
    assert {(r["era"], r["concurrency"]) for r in doc["runs"]} == {
        ("legacy", 1),
        ("legacy", 4),
        ("modern", 1),
        ("modern", 4),
    }
    for run in doc["runs"]:
        assert run["failed"] == 0
        assert {"rps", "latency_us", "cpu_s_per_1k", "peak_rss_mb", "window_s", "ok"} <= run.keys()
        assert {"p50", "p95", "p99"} <= run["latency_us"].keys()
    for row in doc["summary"]:
        assert {"scenario", "era", "target", "concurrency", "rps", "latency_us"} <= row.keys()
    assert (tmp_path / "latest.md").read_text(encoding="utf-8").startswith("# Stile bench")
