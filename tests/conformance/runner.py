"""Run the official MCP conformance suite (npm ``@modelcontextprotocol/conformance``) against a server.

Two suites, each pinned to a package installed by ``tools/install-node.sh``:

* ``legacy``: 0.1.16 in ``tools/conf-legacy``: ``conformance server --url URL --suite all -o DIR``
  (2025-06-18 / 2025-11-25 wires).
* ``modern``: 0.2.0-alpha.12 in ``tools/conf-modern``:
  ``conformance server --url URL --requirements 2026-07-28 -o DIR`` (2026-07-28 wire).

Both need Node 22 (``tools/node22``), which is put first on PATH.

Results are read from ``DIR/server-<scenario>-<timestamp>/checks.json`` into
``{scenario: {check_id: status}}``. A check id may occur several times in one scenario
(e.g. one ``sep-2243-server-reject-invalid-headers`` per header probed, one ``incoming-sse-event``
per event); such entries are folded into one status, the most severe by
FAILURE > WARNING > SKIPPED > INFO > SUCCESS, so a folded status is SUCCESS exactly when every
instance succeeded. If the output dir holds several runs of a scenario, the newest one is used.

CLI (from the repository root)::

    python -m tests.conformance.runner --url http://127.0.0.1:3001/mcp --suite legacy \\
        --write-baseline tests/conformance/baseline-legacy.json
    python -m tests.conformance.runner --fixture --suite both --compare
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

Suite = Literal["legacy", "modern"]
SUITES: tuple[Suite, ...] = get_args(Suite)

REPO_ROOT = Path(__file__).resolve().parents[2]
TOOLS_DIR = REPO_ROOT / "tools"
NODE_BIN_DIR = TOOLS_DIR / "node22" / "node_modules" / ".bin"
CONFORMANCE_DIR = Path(__file__).resolve().parent
INSTALL_HINT = "run tools/install-node.sh"

Results = dict[str, dict[str, str]]


@dataclass(frozen=True)
class SuiteSpec:
    package_dir: Path
    version: str
    args: tuple[str, ...]


SUITE_SPECS: dict[Suite, SuiteSpec] = {
    "legacy": SuiteSpec(TOOLS_DIR / "conf-legacy", "0.1.16", ("--suite", "all")),
    "modern": SuiteSpec(TOOLS_DIR / "conf-modern", "0.2.0-alpha.12", ("--requirements", "2026-07-28")),
}

# Higher = more severe. A folded status is SUCCESS only if every instance was SUCCESS.
SEVERITY = {"SUCCESS": 0, "INFO": 1, "SKIPPED": 2, "WARNING": 3, "FAILURE": 4}
_UNKNOWN_SEVERITY = 5

# server-<scenario>-2026-11-24T15-04-42-614Z
_RUN_DIR = re.compile(r"^server-(?P<scenario>.+)-(?P<ts>\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}(?:-\d+)?Z)$")


class ConformanceError(RuntimeError):
    pass


# --------------------------------------------------------------------------------------------------------
# Environment
# --------------------------------------------------------------------------------------------------------


def node_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment with tools/node22 first on PATH."""
    env = dict(os.environ if base is None else base)
    env["PATH"] = os.pathsep.join([str(NODE_BIN_DIR), env.get("PATH", "")])
    env.setdefault("NO_COLOR", "1")
    env["npm_config_update_notifier"] = "false"
    return env


def missing_tools(suite: Suite) -> str | None:
    """Why `suite` cannot run here (None when it can)."""
    node = NODE_BIN_DIR / "node"
    if not node.exists():
        return f"Node 22 not found at {node} ({INSTALL_HINT})"
    if shutil.which("npx", path=node_env()["PATH"]) is None:
        return "npx not found on PATH"
    spec = SUITE_SPECS[suite]
    pkg = spec.package_dir / "node_modules" / "@modelcontextprotocol" / "conformance" / "package.json"
    if not pkg.exists():
        pkg_name = f"@modelcontextprotocol/conformance@{spec.version}"
        return f"{pkg_name} not installed in {spec.package_dir} ({INSTALL_HINT})"
    have = json.loads(pkg.read_text()).get("version")
    if have != spec.version:
        return f"{spec.package_dir} has conformance {have}, expected {spec.version} ({INSTALL_HINT})"
    return None


# --------------------------------------------------------------------------------------------------------
# Running and parsing
# --------------------------------------------------------------------------------------------------------


def conformance_command(url: str, suite: Suite, out_dir: Path) -> list[str]:
    spec = SUITE_SPECS[suite]
    # --no: never download anything; use the locally installed bin only.
    return ["npx", "--no", "conformance", "server", "--url", url, *spec.args, "-o", str(out_dir)]


def run_conformance(
    url: str, suite: Suite, out_dir: Path, *, timeout: float = 900.0
) -> subprocess.CompletedProcess[str]:
    """Run the suite; the console output is also saved to ``out_dir/console-<suite>.log``.

    Exit code 1 (some check failed) is normal and not an error here.
    """
    if (reason := missing_tools(suite)) is not None:
        raise ConformanceError(reason)
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    cmd = conformance_command(url, suite, out_dir)
    try:
        proc = subprocess.run(
            cmd,
            cwd=SUITE_SPECS[suite].package_dir,
            env=node_env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise ConformanceError(f"{suite} conformance suite did not finish within {timeout}s") from exc
    (out_dir / f"console-{suite}.log").write_text(
        f"$ {' '.join(cmd)}\n# exit code {proc.returncode}\n\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"
    )
    return proc


def collect_checks(out_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """Every scenario's raw check list, from the newest ``server-<scenario>-<ts>/checks.json``."""
    newest: dict[str, tuple[str, Path]] = {}
    for path in Path(out_dir).rglob("checks.json"):
        m = _RUN_DIR.match(path.parent.name)
        scenario, ts = (m["scenario"], m["ts"]) if m else (path.parent.name, "")
        if scenario not in newest or ts > newest[scenario][0]:
            newest[scenario] = (ts, path)
    out: dict[str, list[dict[str, Any]]] = {}
    for scenario, (_, path) in sorted(newest.items()):
        data = json.loads(path.read_text())
        if not isinstance(data, list):
            raise ConformanceError(f"{path}: expected a JSON list of checks")
        out[scenario] = data
    return out


def fold_status(statuses: list[str]) -> str:
    return max(statuses, key=lambda s: SEVERITY.get(s, _UNKNOWN_SEVERITY))


def statuses_of(checks: Mapping[str, list[dict[str, Any]]]) -> Results:
    results: Results = {}
    for scenario, items in sorted(checks.items()):
        grouped: dict[str, list[str]] = {}
        for item in items:
            grouped.setdefault(str(item.get("id")), []).append(str(item.get("status")))
        results[scenario] = {cid: fold_status(sts) for cid, sts in sorted(grouped.items())}
    return results


def parse_results(out_dir: Path) -> Results:
    return statuses_of(collect_checks(out_dir))


def run_suite(url: str, suite: Suite, out_dir: Path, *, timeout: float = 900.0) -> Results:
    """Run one suite against `url` and return ``{scenario: {check_id: status}}`` (sorted)."""
    if suite not in SUITE_SPECS:
        raise ValueError(f"unknown suite {suite!r}; expected one of {SUITES}")
    proc = run_conformance(url, suite, out_dir, timeout=timeout)
    results = parse_results(out_dir)
    if not results:
        raise ConformanceError(
            f"{suite} conformance produced no checks.json under {out_dir} (exit {proc.returncode});\n"
            f"stdout tail:\n{proc.stdout[-3000:]}\nstderr tail:\n{proc.stderr[-3000:]}"
        )
    return results


# --------------------------------------------------------------------------------------------------------
# Baselines and comparison
# --------------------------------------------------------------------------------------------------------


def baseline_path(suite: Suite) -> Path:
    return CONFORMANCE_DIR / f"baseline-{suite}.json"


def load_baseline(suite_or_path: Suite | Path | str) -> Results:
    path = baseline_path(suite_or_path) if suite_or_path in SUITES else Path(suite_or_path)
    data: Results = json.loads(Path(path).read_text())
    return data


def dump_results(results: Results) -> str:
    return json.dumps(results, sort_keys=True, indent=2) + "\n"


def write_baseline(results: Results, path: Path) -> None:
    Path(path).write_text(dump_results(results))


def _error_messages(out_dir: Path | None) -> dict[tuple[str, str], str]:
    if out_dir is None:
        return {}
    messages: dict[tuple[str, str], str] = {}
    for scenario, items in collect_checks(out_dir).items():
        for item in items:
            if item.get("status") != "SUCCESS" and item.get("errorMessage"):
                key = (scenario, str(item.get("id")))
                messages.setdefault(key, " ".join(str(item["errorMessage"]).split())[:300])
    return messages


def passed_scenarios(baseline: Results) -> set[str]:
    """Scenarios the fixture passes directly: no check FAILURE (WARNING/INFO/SKIPPED are not failures)."""
    return {s for s, checks in baseline.items() if "FAILURE" not in checks.values()}


def compare_to_baseline(results: Results, baseline: Results, *, out_dir: Path | None = None,
                        passed_only: bool = False) -> list[str]:
    """Checks that are SUCCESS in `baseline` but not in `results`, one readable line each.

    Checks new in `results`, or non-SUCCESS in the baseline, are never regressions. With
    `passed_only`, only scenarios the fixture passes directly are compared (a scenario the fixture
    itself fails, such as the unscored tasks-* extension set, has no passing behaviour to keep).
    Pass the run's `out_dir` to append each failing check's ``errorMessage``.
    """
    messages = _error_messages(out_dir)
    regressions: list[str] = []
    scenarios = passed_scenarios(baseline) if passed_only else set(baseline)
    for scenario in sorted(scenarios):
        now = results.get(scenario)
        for check_id, was in sorted(baseline[scenario].items()):
            if was != "SUCCESS":
                continue
            got = "MISSING (scenario did not run)" if now is None else now.get(check_id, "MISSING")
            if got != "SUCCESS":
                line = f"{scenario} :: {check_id}: SUCCESS -> {got}"
                if (msg := messages.get((scenario, check_id))) is not None:
                    line += f" ({msg})"
                regressions.append(line)
    return regressions


def improvements(results: Results, baseline: Results) -> list[str]:
    """Checks SUCCESS now but not in the baseline (informational: refresh the baseline)."""
    out: list[str] = []
    for scenario, checks in sorted(results.items()):
        for check_id, got in sorted(checks.items()):
            was = baseline.get(scenario, {}).get(check_id, "ABSENT")
            if got == "SUCCESS" and was != "SUCCESS":
                out.append(f"{scenario} :: {check_id}: {was} -> SUCCESS")
    return out


def tally(results: Results) -> Counter[str]:
    """How many (folded) checks have each status."""
    return Counter(status for checks in results.values() for status in checks.values())


def tally_instances(out_dir: Path) -> Counter[str]:
    """How many raw check instances have each status (what the console's Total counts)."""
    return Counter(str(item.get("status")) for items in collect_checks(out_dir).values() for item in items)


def describe(results: Results) -> str:
    counts = tally(results)
    scen_fail = sorted(s for s, checks in results.items() if "FAILURE" in checks.values())
    parts = ", ".join(f"{k}={counts[k]}" for k in sorted(counts, key=lambda k: SEVERITY.get(k, 9)))
    lines = [f"{len(results)} scenarios; checks: {parts}"]
    if scen_fail:
        lines.append(f"scenarios with failures ({len(scen_fail)}): {', '.join(scen_fail)}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------------


def _run_one(url: str, suite: Suite, out_root: Path, args: argparse.Namespace) -> int:
    out_dir = out_root / suite
    started = time.monotonic()
    results = run_suite(url, suite, out_dir, timeout=args.timeout)
    elapsed = time.monotonic() - started
    inst = tally_instances(out_dir)
    print(f"== {suite}: {elapsed:.1f}s, results in {out_dir}")
    print(describe(results))
    print(f"check instances: {dict(sorted(inst.items()))}")
    rc = 0
    if args.write_baseline is not None:
        target = Path(args.write_baseline) if args.write_baseline else baseline_path(suite)
        write_baseline(results, target)
        print(f"baseline written: {target}")
    if args.compare is not None:
        base_file = Path(args.compare) if args.compare else baseline_path(suite)
        baseline = load_baseline(base_file)
        regressions = compare_to_baseline(results, baseline, out_dir=out_dir)
        for line in improvements(results, baseline):
            print(f"  improved: {line}")
        if regressions:
            print(f"REGRESSIONS vs {base_file} ({len(regressions)}):")
            for line in regressions:
                print(f"  {line}")
            rc = 1
        else:
            print(f"no regressions vs {base_file}")
    if args.json:
        print(dump_results(results), end="")
    return rc


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m tests.conformance.runner", description=__doc__.splitlines()[0]
    )
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--url", help="MCP endpoint to test, e.g. http://127.0.0.1:3001/mcp")
    target.add_argument("--fixture", action="store_true", help="start tests/fixtures/conformance_server.py")
    p.add_argument("--suite", choices=[*SUITES, "both"], default="both")
    p.add_argument("--out", help="output dir (default: a fresh temp dir, kept)")
    p.add_argument(
        "--write-baseline",
        metavar="FILE",
        nargs="?",
        const="",
        default=None,
        help="write results as a baseline (FILE; default tests/conformance/baseline-<suite>.json)",
    )
    p.add_argument(
        "--compare",
        metavar="FILE",
        nargs="?",
        const="",
        default=None,
        help="compare with a baseline (default tests/conformance/baseline-<suite>.json); "
        "exit 1 on regressions",
    )
    p.add_argument("--json", action="store_true", help="print the results mapping as JSON")
    p.add_argument("--timeout", type=float, default=900.0, help="per-suite timeout in seconds")
    args = p.parse_args(argv)
    args.suites = list(SUITES) if args.suite == "both" else [args.suite]
    if len(args.suites) > 1 and (args.write_baseline or args.compare):
        p.error("--write-baseline FILE / --compare FILE need a single --suite (omit FILE for the defaults)")

    out_root = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="stile-conformance-"))
    try:
        if args.fixture:
            from tests.fixtures import fixture_server

            with fixture_server() as url:
                print(f"fixture at {url}")
                return max([_run_one(url, s, out_root, args) for s in args.suites])
        return max([_run_one(args.url, s, out_root, args) for s in args.suites])
    except ConformanceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
