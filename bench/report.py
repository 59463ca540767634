"""Figures from raw runs: medians with min-max spread, added latency over direct, markdown, chart."""

from __future__ import annotations

import datetime as dt
import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from bench.scenarios import SCENARIOS

PCTS = ("p50", "p95", "p99")
Key = tuple[str, str, str, int]  # scenario, era, target, concurrency
_DASH = "\u2013"  # en dash in "median (min-max)" cells
_SCN_ORDER = {name: i for i, name in enumerate(SCENARIOS)}
_ROLE_ORDER = {"direct": 0, "gateway": 1, "reference": 2, "peer": 3}


def _spread(raw: list[float | None]) -> dict[str, float] | None:
    vals = [v for v in raw if v is not None]
    if not vals:
        return None
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "n": len(vals)}


def _good(r: dict[str, Any]) -> bool:
    return "fatal" not in r and r.get("ok", 0) > 0


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[Key, list[dict[str, Any]]] = defaultdict(list)
    for r in runs:
        if "target" in r:
            groups[(r["scenario"], r["era"], r["target"], r["concurrency"])].append(r)
    out = []
    for (scn, era, target, conc), rs in groups.items():
        good = [r for r in rs if _good(r)]
        row: dict[str, Any] = {
            "scenario": scn,
            "era": era,
            "target": target,
            "role": rs[0].get("role"),
            "concurrency": conc,
            "runs": len(rs),
            "good_runs": len(good),
            "errors": sum(r.get("failed", 0) for r in rs),
            "error_kinds": sorted({k for r in rs for k in (r.get("errors") or {})}),
            "rps": _spread([r["rps"] for r in good]),
            "latency_us": {p: _spread([r["latency_us"].get(p) for r in good]) for p in PCTS},
            "cpu_s_per_1k": _spread([r.get("cpu_s_per_1k") for r in good]),
            "upstream_cpu_s_per_1k": _spread([r.get("upstream_cpu_s_per_1k") for r in good]),
            "gen_cpu_s_per_1k": _spread([r.get("gen_cpu_s_per_1k") for r in good]),
            "peak_rss_mb": max((r.get("peak_rss_mb") or 0 for r in good), default=None),
            "tree_pss_mb": max((r.get("tree_pss_mb") or 0 for r in good), default=None),
            "saturated": sorted({r.get("saturated", "?") for r in good}),
        }
        fatals = [r["fatal"] for r in rs if "fatal" in r]
        if fatals:
            row["fatal"] = fatals[0]
        out.append(row)
    out.sort(key=lambda x: (_SCN_ORDER.get(x["scenario"], 99), x["era"], _ROLE_ORDER.get(x["role"], 9),
                            x["target"], x["concurrency"]))  # fmt: skip
    return out


def added_latency(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (scenario, era, target, concurrency): target minus direct, paired by repeat, then spread."""
    direct = {
        (r["scenario"], r["era"], r["concurrency"], r["repeat"]): r
        for r in runs
        if r.get("target") == "direct" and _good(r)
    }
    groups: dict[Key, list[tuple[dict[str, Any], dict[str, Any]]]] = defaultdict(list)
    for r in runs:
        if r.get("target") in (None, "direct") or not _good(r):
            continue
        d = direct.get((r["scenario"], r["era"], r["concurrency"], r["repeat"]))
        if d is not None:
            groups[(r["scenario"], r["era"], r["target"], r["concurrency"])].append((r, d))
    out = []
    for (scn, era, target, conc), pairs in sorted(groups.items()):
        row: dict[str, Any] = {"scenario": scn, "era": era, "target": target, "concurrency": conc}
        row["added_us"] = {p: _spread([r["latency_us"][p] - d["latency_us"][p] for r, d in pairs]) for p in PCTS}
        row["rps_vs_direct"] = _spread([r["rps"] / d["rps"] for r, d in pairs if d["rps"]])
        out.append(row)
    return out


def progress_line(r: dict[str, Any]) -> str:
    head = f"{r['target']:<22} {r['era']:<6} c={r['concurrency']:<4} rep={r['repeat']}"
    if "fatal" in r:
        return f"{head} FATAL {r['fatal'][:200]}"
    lat = r.get("latency_us") or {}
    cpu = r.get("cpu_s_per_1k")
    s = f"{head} {r['rps']:>9.0f} req/s  p50 {lat.get('p50', 0):>9.0f} us  p99 {lat.get('p99', 0):>9.0f} us"
    s += f"  cpu {cpu:.3f} s/1k" if cpu is not None else ""
    s += f"  rss {r.get('peak_rss_mb', 0):.0f} MB  bound:{r.get('saturated')}"
    if r.get("failed"):
        s += f"  FAILED {r['failed']} {list((r.get('errors') or {}).keys())[:3]}"
    return s


# --------------------------------------------------------------------------------------------------
def _fmt(s: dict[str, float] | None, digits: int = 0, scale: float = 1.0) -> str:
    if not s:
        return "-"
    med, lo, hi = s["median"] * scale, s["min"] * scale, s["max"] * scale
    if s["n"] == 1 or abs(hi - lo) < 10 ** (-digits) / 2:
        return f"{med:,.{digits}f}"
    return f"{med:,.{digits}f} ({lo:,.{digits}f}{_DASH}{hi:,.{digits}f})"


def markdown(doc: dict[str, Any]) -> str:
    meta, cfg = doc["meta"], doc["config"]
    m = meta["machine"]
    lines = [
        f"# Stile bench — {meta['started']}",
        "",
        f"- command: `{meta['command']}`",
        f"- machine: {m['nproc']} cores, {m['cpu_model']}, Python {m['python']}, git {m['git_rev']}",
        f"- pinning: {meta['pinning']}",
        f"- load client: {meta['client']}; upstream: {meta['upstream']}; policies: {meta['policies']}; "
        f"observe: {meta.get('observe', 'n/a')}",
        f"- {cfg['repeats']} repeat(s) x {cfg['duration_s']} s (+{cfg['warmup_s']} s warmup) per point; "
        f"cells are median (min{_DASH}max) over repeats; targets interleaved within each repeat",
        "",
        "## Targets",
        "",
        "| target | role | status | notes |",
        "|---|---|---|---|",
    ]
    for name, t in doc["targets"].items():
        notes = t.get("reason") or ", ".join(f"{k}={v}" for k, v in t.get("info", {}).items() if k != "argv")
        bad = {k: v for k, v in t.get("runs", {}).items() if v != "ok"}
        if bad and not t.get("reason"):
            notes = "; ".join(f"{k}: {v[:160]}" for k, v in bad.items())
        notes = " ".join(str(notes).split()).replace("|", "/")
        lines.append(f"| {name} | {t['role']} | {t['status']} | {notes[:700]} |")
    added = {(a["scenario"], a["era"], a["target"], a["concurrency"]): a for a in doc.get("added", [])}
    combos = list(dict.fromkeys((s["scenario"], s["era"]) for s in doc["summary"]))
    for scn, era in combos:
        lines += [
            "",
            f"## {scn} — {era}",
            "",
            "| target | conc | req/s | p50 µs | p95 µs | p99 µs | added p50 µs | added p95 µs | added p99 µs "
            "| CPU s/1k req | peak RSS MB | bound | errors |",
            "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|--:|",
        ]
        for s in doc["summary"]:
            if (s["scenario"], s["era"]) != (scn, era):
                continue
            if s.get("good_runs", 0) == 0:
                why = str(s.get("fatal", s["error_kinds"]))[:120]
                lines.append(f"| {s['target']} | {s['concurrency']} | failed: {why} | | | | | | | | | | |")
                continue
            a = added.get((scn, era, s["target"], s["concurrency"]))
            lat = s["latency_us"]
            cells = [
                s["target"],
                s["concurrency"],
                _fmt(s["rps"]),
                *(_fmt(lat[p]) for p in PCTS),
                *(_fmt(a["added_us"][p]) if a else "" for p in PCTS),
                _fmt(s["cpu_s_per_1k"], 3),
                s["peak_rss_mb"] or "-",
                ",".join(s["saturated"]),
                s["errors"],
            ]
            lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    lines += [
        "",
        "req/s: successful requests per second in the window. pXX: client-observed latency. added pXX: "
        "target minus direct, paired by repeat. CPU s/1k req: CPU seconds of the process under test "
        "(direct: the upstream; others: the gateway/peer process tree, upstream excluded) per 1,000 "
        "successful requests. peak RSS: VmHWM of the target's main process at the end of the run (a high-"
        "water mark since it started; see tree_pss_mb in the JSON for multi-process peers). bound: which "
        "pinned core was >= 90% busy (client = load generator + upstream core; for direct that is the "
        "harness ceiling).",
    ]
    for p in doc.get("profiles", []):
        lines.append(f"- profile {p.get('target')}: {p.get('svg') or p.get('reason')}")
        if p.get("stages"):
            from bench.stages import markdown

            lines += ["", f"{p.get('target')} {p.get('era')} c={p.get('concurrency')} " + markdown(
                p["stages"], p.get("cpu_us_per_call")), ""]
    return "\n".join(lines) + "\n"


def chart(doc: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import NullLocator
    except ImportError:
        return False
    combos = list(dict.fromkeys((s["scenario"], s["era"]) for s in doc["summary"] if s.get("good_runs")))
    if not combos:
        return False
    fig, axes = plt.subplots(len(combos), 3, figsize=(17, 4.2 * len(combos)), squeeze=False)
    colors: dict[str, Any] = {}
    palette = plt.get_cmap("tab10")
    for row, (scn, era) in enumerate(combos):
        ax_lat, ax_rps, ax_add = axes[row]
        rows = [s for s in doc["summary"] if (s["scenario"], s["era"]) == (scn, era) and s.get("good_runs")]
        for target in dict.fromkeys(s["target"] for s in rows):
            color = colors.setdefault(target, palette(len(colors) % 10))
            pts = sorted((s for s in rows if s["target"] == target), key=lambda s: s["concurrency"])
            xs = [s["concurrency"] for s in pts]
            for pct, style in (("p50", "-"), ("p99", "--")):
                ys = [s["latency_us"][pct]["median"] for s in pts]
                err = [
                    [y - s["latency_us"][pct]["min"] for y, s in zip(ys, pts, strict=True)],
                    [s["latency_us"][pct]["max"] - y for y, s in zip(ys, pts, strict=True)],
                ]
                ax_lat.errorbar(xs, ys, yerr=err, fmt=style + "o", color=color, ms=3, capsize=2,
                                label=f"{target} {pct}")  # fmt: skip
            ys = [s["rps"]["median"] for s in pts]
            err = [[y - s["rps"]["min"] for y, s in zip(ys, pts, strict=True)],
                   [s["rps"]["max"] - y for y, s in zip(ys, pts, strict=True)]]  # fmt: skip
            ax_rps.errorbar(xs, ys, yerr=err, fmt="-o", color=color, ms=3, capsize=2, label=target)
        adds = [a for a in doc.get("added", []) if (a["scenario"], a["era"]) == (scn, era)]
        for target in sorted({a["target"] for a in adds}):
            color = colors.setdefault(target, palette(len(colors) % 10))
            pts = sorted((a for a in adds if a["target"] == target), key=lambda a: a["concurrency"])
            for pct, style in (("p50", "-"), ("p99", "--")):
                xs = [a["concurrency"] for a in pts if a["added_us"][pct]]
                ys = [a["added_us"][pct]["median"] for a in pts if a["added_us"][pct]]
                ax_add.plot(xs, ys, style + "o", color=color, ms=3, label=f"{target} {pct}")
        if not adds:
            ax_add.text(0.5, 0.5, "no gateway target ran", ha="center", va="center", transform=ax_add.transAxes)
        for ax, title, ylabel in (
            (ax_lat, "latency (median of repeats, min-max bars)", "µs"),
            (ax_rps, "throughput", "req/s"),
            (ax_add, "added latency over direct", "µs"),
        ):
            ax.set_title(f"{scn} / {era}: {title}", fontsize=9)
            ax.set_xscale("log", base=2)
            ax.set_xlabel("concurrency (virtual users)")
            ax.set_ylabel(ylabel)
            ax.grid(True, which="both", alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
        ax_lat.set_yscale("log")
        rps_vals = [s["rps"]["median"] for s in rows if s["rps"]]
        if rps_vals and max(rps_vals) > 20 * max(min(rps_vals), 1e-9):
            ax_rps.set_yscale("log")  # peers can be 1000x slower than direct
        else:
            ax_rps.set_ylim(bottom=0)
        if adds:
            ax_add.set_yscale("symlog", linthresh=100)
            lows = [a["added_us"][p]["min"] for a in adds for p in ("p50", "p99") if a["added_us"][p]]
            if lows and min(lows) >= 0:
                ax_add.set_ylim(bottom=0)
        ticks = sorted({s["concurrency"] for s in rows})
        for ax in (ax_lat, ax_rps, ax_add):
            ax.set_xticks(ticks, [str(t) for t in ticks])
            ax.xaxis.set_minor_locator(NullLocator())
    m = doc["meta"]
    fig.suptitle(f"Stile bench {m['started']} — {m['machine']['cpu_model']}, {m['pinning']}", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def write_all(doc: dict[str, Any], results_dir: Path, started: dt.datetime | None) -> dict[str, Any]:
    """Write <stamp>.json (unless ``started`` is None: re-rendering), latest.md and latest.png."""
    json_path = None
    if started is not None:
        json_path = results_dir / f"{started.strftime('%Y%m%dT%H%M%SZ')}.json"
        json_path.write_text(json.dumps(doc, indent=1, default=str), encoding="utf-8")
    md = markdown(doc)
    md_path = results_dir / "latest.md"
    md_path.write_text(md, encoding="utf-8")
    png_path = results_dir / "latest.png"
    has_png = chart(doc, png_path)
    return {"json": json_path, "md": md_path, "png": png_path if has_png else None, "markdown_text": md}


def rerender(json_path: Path) -> int:
    """``python -m bench report FILE.json``: rebuild latest.md / latest.png beside it from raw runs."""
    doc = json.loads(json_path.read_text(encoding="utf-8"))
    doc["summary"] = summarize(doc["runs"])
    doc["added"] = added_latency(doc["runs"])
    paths = write_all(doc, json_path.parent, None)
    print(paths["markdown_text"])
    return 0
