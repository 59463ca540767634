"""Orchestration: start targets per scenario, probe each era, run interleaved repeats, profile."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import report, stages
from bench.procs import PY, REPO, Pinning, Procs, Unavailable, taskset
from bench.scenarios import SCENARIOS, Scenario
from bench.targets import Env, Target, UpstreamPool, make_targets

BUSY = 0.90  # a core this busy during a run is counted as saturated


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def machine() -> dict[str, Any]:
    model = "?"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, cwd=REPO, text=True)
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "git_rev": rev.stdout.strip() or None,
    }


def load_once(
    target: Target,
    scn: Scenario,
    era: str,
    concurrency: int,
    duration: float,
    warmup: float,
    client: str,
    pin: Pinning,
) -> dict[str, Any]:
    """One generator process against ``target``; returns its JSON plus the harness's annotations."""
    server = target.server_pids()
    ups = target.upstream_pids()
    argv = [
        PY, "-m", "bench.load",
        "--url", target.url,
        "--scenario", scn.name,
        "--era", era,
        "--concurrency", str(concurrency),
        "--duration", str(duration),
        "--warmup", str(warmup),
        "--client", client,
    ]  # fmt: skip
    tool = target.tool(scn)
    if tool is not None and tool != scn.tool:
        argv += ["--tool", tool]
    for pid in server + ups:
        argv += ["--watch-pid", str(pid)]
    timeout = warmup + duration + 120
    env = {**os.environ, "PYTHONPATH": str(REPO), **target.load_env}
    try:
        out = subprocess.run(taskset(pin.client, argv), capture_output=True, timeout=timeout, env=env, cwd=REPO)
    except subprocess.TimeoutExpired:
        return {"fatal": f"load generator did not finish within {timeout:.0f}s"}
    lines = out.stdout.decode("utf-8", "replace").strip().splitlines()
    if out.returncode != 0 or not lines:
        return {"fatal": f"load generator exited {out.returncode}: {out.stderr.decode('utf-8', 'replace')[-600:]}"}
    res: dict[str, Any] = json.loads(lines[-1])
    if "fatal" in res:
        return res
    cpu = res.pop("watch_cpu_s", {}) or {}

    def total(pids: list[int]) -> float | None:
        vals = [cpu.get(str(p)) for p in pids]
        known = [v for v in vals if v is not None]
        return float(sum(known)) if known else None

    ok = max(res.get("ok", 0), 1)
    server_cpu, up_cpu = total(server), total(ups)
    res["server_cpu_s"] = server_cpu
    res["cpu_s_per_1k"] = None if server_cpu is None else server_cpu / ok * 1000
    res["upstream_cpu_s_per_1k"] = None if up_cpu is None or not ups else up_cpu / ok * 1000
    res["gen_cpu_s_per_1k"] = None if res.get("gen_cpu_s") is None else res["gen_cpu_s"] / ok * 1000
    if target.proc is not None:
        res.update(target.proc.memory())
    busy = res.get("core_busy") or {}
    server_core = [busy.get(f"cpu{c}") for c in pin.server]
    client_core = [busy.get(f"cpu{c}") for c in pin.client]
    res["server_core_busy"] = server_core[0] if server_core else None
    res["client_core_busy"] = client_core[0] if client_core else None
    res["saturated"] = _saturation(target, res)
    return res


def _saturation(target: Target, res: dict[str, Any]) -> str:
    """Which side limited this run: 'server' core, 'client' core (generator + upstream), both, none."""
    s, c = res.get("server_core_busy"), res.get("client_core_busy")
    if s is None or c is None:
        return "unknown (not pinned)"
    if target.role == "direct":  # the upstream runs on the client core
        return "client" if c >= BUSY else "none"
    if s >= BUSY and c >= BUSY:
        return "both"
    if s >= BUSY:
        return "server"
    return "client" if c >= BUSY else "none"


def profile_once(
    target: Target,
    scn: Scenario,
    era: str,
    concurrency: int,
    duration: float,
    warmup: float,
    args: Any,
    pin: Pinning,
) -> dict[str, Any]:
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(pyspy).exists():
        log("  py-spy not found; installing it into this venv (pip install py-spy) ...")
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "py-spy"], capture_output=True, timeout=600)
        pyspy = str(Path(sys.executable).parent / "py-spy")
        if not Path(pyspy).exists():
            return {"target": target.name, "status": "skipped", "reason": "py-spy could not be installed"}
    if target.proc is None:
        return {"target": target.name, "status": "skipped", "reason": "no process"}
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    raw = bool(getattr(args, "stages", False))
    kind = "stacks" if raw else "flame"
    suffix = "txt" if raw else "svg"
    svg = Path(args.results_dir) / f"{kind}-{target.name}-{scn.name}-{era}-c{concurrency}-{stamp}.{suffix}"
    argv = [
        pyspy, "record", "--pid", str(target.proc.pid), "--duration", str(int(warmup + duration + 1)),
        "--rate", "250", "--nonblocking", "--subprocesses", *(["--threads"] if raw else []),
        "--format", "raw" if raw else "flamegraph",
        "--output", str(svg),
    ]  # fmt: skip
    spy = subprocess.Popen(taskset(pin.client, argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(0.5)
    res = load_once(target, scn, era, concurrency, duration, warmup, args.client, pin)
    try:
        _, err = spy.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        spy.kill()
        _, err = spy.communicate()
    if spy.returncode != 0 or not svg.exists():
        return {
            "target": target.name,
            "status": "failed",
            "reason": f"py-spy exited {spy.returncode}: {err.decode(errors='replace')[-400:]}",
        }
    out: dict[str, Any] = {
        "target": target.name,
        "scenario": scn.name,
        "era": era,
        "concurrency": concurrency,
        "status": "ok",
        "svg": str(svg),
        "rps_while_profiled": res.get("rps"),
    }
    if raw:
        per_1k = res.get("cpu_s_per_1k")
        cpu_us = None if per_1k is None else float(per_1k) * 1000
        out["cpu_us_per_call"] = cpu_us
        out["stages"] = stages.breakdown(svg.read_text(encoding="utf-8", errors="replace"), cpu_us)
        log(stages.markdown(out["stages"], cpu_us))
    return out


def run(args: Any) -> int:
    results_dir = Path(args.results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    pin = Pinning.auto(args.pin)
    procs = Procs()
    workdir = Path(tempfile.mkdtemp(prefix="stile-bench-"))
    env = Env(
        procs=procs,
        pin=pin,
        workdir=workdir,
        upstream_kind=args.upstream,
        policies=args.policies,
        observe=args.observe,
        stile_exe=Path(args.stile_exe),
        log=log,
    )
    scenarios = [SCENARIOS[s] for s in args.scenarios]
    eras = ["legacy", "modern"] if args.era == "both" else [args.era]
    started = dt.datetime.now(dt.UTC)
    doc: dict[str, Any] = {
        "schema": 1,
        "meta": {
            "started": started.isoformat(timespec="seconds"),
            "command": "python -m bench " + " ".join(args.argv),
            "machine": machine(),
            "pinning": pin.describe(),
            "client": args.client,
            "upstream": args.upstream,
            "policies": args.policies,
            "observe": args.observe,
        },
        "config": {
            "scenarios": args.scenarios,
            "eras": eras,
            "concurrency": args.concurrency,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "repeats": args.repeats,
            "targets": args.targets,
            "peers": args.peers,
            "smoke": args.smoke,
            "profile": args.profile,
        },
        "targets": {},
        "runs": [],
        "profiles": [],
    }
    n_runs = len(scenarios) * len(eras) * args.repeats * len(args.concurrency) * (len(args.targets) + len(args.peers))
    log(
        f"stile bench: {len(scenarios)} scenario(s) x {len(eras)} era(s) x {args.repeats} repeat(s) x "
        f"{len(args.concurrency)} concurrency level(s); pinning: {pin.describe()}; "
        f"~{n_runs * (args.duration + args.warmup + 1.0) / 60:.1f} min of load at most"
    )
    try:
        for scn in scenarios:
            _run_scenario(scn, eras, args, env, doc)
    except KeyboardInterrupt:
        log("interrupted: writing what was measured so far")
    finally:
        procs.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    doc["meta"]["finished"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    doc["summary"] = report.summarize(doc["runs"])
    doc["added"] = report.added_latency(doc["runs"])
    paths = report.write_all(doc, results_dir, started)
    print(paths["markdown_text"])
    png = paths["png"] or "(no chart: matplotlib missing)"
    log(f"results: {paths['json']}\n         {paths['md']}\n         {png}")
    return _verdict(doc, args)


def _run_scenario(scn: Scenario, eras: list[str], args: Any, env: Env, doc: dict[str, Any]) -> None:
    log(f"\n== scenario {scn.name}: {scn.summary}")
    if scn.note:
        log(f"   note: {scn.note}")
    pool = UpstreamPool(env)
    targets = make_targets(args.targets, args.peers, env)
    active: list[Target] = []
    try:
        for t in targets:
            entry = doc["targets"].setdefault(t.name, {"role": t.role, "status": "ok", "runs": {}, "info": {}})
            log(f"   starting {t.name} ...")
            try:
                t.start(scn, pool)
            except Unavailable as exc:
                reason = str(exc)
                entry["runs"][scn.name] = f"not started: {reason}"
                if entry["status"] == "ok" and not any(v == "ok" for v in entry["runs"].values()):
                    entry["status"] = "unavailable"
                entry.setdefault("reason", reason)
                log(f"   !! {t.name} NOT RUN: {reason}")
                continue
            entry["info"].update(t.info)
            if t.role != "direct":
                entry["info"]["processes"] = len(t.server_pids())
            if entry["status"] == "unavailable":
                entry["status"] = "partial"
            active.append(t)
            log(f"   {t.name} up at {t.url}")
        for era in eras:
            era_targets = []
            for t in active:
                probe = load_once(t, scn, era, 1, 0.3, 0.0, args.client, env.pin)
                entry = doc["targets"][t.name]
                key = f"{scn.name}/{era}"
                if "fatal" in probe or probe.get("ok", 0) == 0 or probe.get("failed", 0) > 0:
                    why = probe.get("fatal") or "; ".join(probe.get("error_samples", [])[:2]) or "no successful request"
                    entry["runs"][key] = f"failed probe: {why}"
                    entry["status"] = "partial" if entry["status"] == "ok" else entry["status"]
                    log(f"   !! {t.name} {era}: probe failed, skipping: {why[:300]}")
                    continue
                entry["runs"][key] = "ok"
                era_targets.append(t)
            for rep in range(args.repeats):
                order = era_targets if rep % 2 == 0 else list(reversed(era_targets))
                for conc in args.concurrency:
                    for t in order:
                        res = load_once(t, scn, era, conc, args.duration, args.warmup, args.client, env.pin)
                        res.update({"target": t.name, "role": t.role, "scenario": scn.name, "era": era})
                        res.update({"concurrency": conc, "repeat": rep})
                        doc["runs"].append(res)
                        log("   " + report.progress_line(res))
            if args.profile or args.stages:
                for t in era_targets:
                    log(f"   profiling {t.name} ({era}, concurrency {max(args.concurrency)}) with py-spy ...")
                    prof = profile_once(t, scn, era, max(args.concurrency), args.duration, args.warmup, args, env.pin)
                    doc["profiles"].append(prof)
                    log(f"   profile: {prof.get('svg') or prof.get('reason')}")
    finally:
        for t in active:
            t.stop()
        pool.stop()


def _verdict(doc: dict[str, Any], args: Any) -> int:
    direct_runs = [r for r in doc["runs"] if r.get("target") == "direct"]
    direct_ok = bool(direct_runs) and all("fatal" not in r and r.get("ok", 0) > 0 for r in direct_runs)
    stile = doc["targets"].get("stile")
    if stile is None:
        print(f"STILE: not requested (--targets {','.join(args.targets)})")
    else:
        ran = [r for r in doc["runs"] if r.get("target") == "stile" and r.get("ok", 0) > 0]
        if ran:
            print(f"STILE: ran ({len(ran)} run(s))")
        else:
            print(f"STILE: did NOT run: {stile.get('reason') or stile.get('runs')}")
    if "direct" in args.targets:
        print("DIRECT: ok" if direct_ok else "DIRECT: FAILED")
        return 0 if direct_ok else 1
    return 0 if doc["runs"] else 1
