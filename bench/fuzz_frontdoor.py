"""``python -m bench fuzz-frontdoor --seconds 600``: fuzz a real Stile process through its front door.

Hypothesis generates raw HTTP requests (bench/fuzz_cases.py) against a gateway started by
bench/fuzz_target.py; after every case the oracle checks: no HTTP 5xx, no JSON-RPC -32603 (in the answer
or on the held legacy SSE stream), no traceback / "unhandled" line in the gateway's log; every
`--check-every` cases `/healthz` and a real `tools/call` must work and RSS must stay under
`--max-rss-mb`. A failure is shrunk by hypothesis to a minimal request, printed (raw bytes, repr) and
written to `bench/results/fuzz-<UTC time>-<n>.txt`; known failures (same signature) are counted, not
re-shrunk. Exit status 1 when anything was found.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis.errors import FlakyFailure

from bench.fuzz_cases import Case, cases
from bench.fuzz_target import (
    FuzzTarget,
    SseStream,
    answer_problems,
    exchange,
    liveness_problems,
    log_problems,
    request,
)

BENCH = Path(__file__).resolve().parent
ROUND = 200  # examples per hypothesis run (each run has its own seed)


class Found(Exception):
    def __init__(self, signature: str, problems: list[str]) -> None:
        super().__init__(signature)
        self.signature = signature
        self.problems = problems


@dataclass
class Stats:
    cases: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    found: dict[str, int] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)
    rss_start: float = 0.0
    rss_max: float = 0.0


class SseWatch:
    """A held legacy SSE stream (its session id fills `{SSE}`); a thread collects what it sends."""

    def __init__(self, target: FuzzTarget) -> None:
        self.target = target
        self.lock = threading.Lock()
        self.data = b""
        self.stream = self._open()

    def _open(self) -> SseStream:
        stream = SseStream(self.target.port)
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()
        return stream

    def _pump(self, stream: SseStream) -> None:
        stream.sock.settimeout(None)
        while True:
            try:
                chunk = stream.sock.recv(65536)
            except OSError:
                return
            if not chunk:
                return
            with self.lock:
                self.data += chunk

    def take(self) -> bytes:
        with self.lock:
            data, self.data = self.data, b""
        return data

    def close(self) -> None:
        self.stream.close()


class Fuzzer:
    def __init__(self, target: FuzzTarget, *, timeout: float, max_rss_mb: float, check_every: int,
                 results: Path, quiet: bool = False) -> None:
        self.target = target
        self.timeout = timeout
        self.max_rss_mb = max_rss_mb
        self.check_every = check_every
        self.results = results
        self.quiet = quiet
        self.stats = Stats()
        self.current: Case | None = None
        self.previous: Case | None = None  # a late log line may belong to the case before
        self.failing: Case | None = None
        self.failing_previous: Case | None = None
        self.sse = SseWatch(target)
        self.fill = {"{KEY}": target.key, "{SSE}": self.sse.stream.session_id,
                     "{SID25}": self._session("2025-11-25"), "{SID0326}": self._session("2025-03-26")}
        target.new_log()
        self.stats.rss_start = self.stats.rss_max = target.rss_mb()

    def _session(self, version: str) -> str:
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize",
                           "params": {"protocolVersion": version, "capabilities": {},
                                      "clientInfo": {"name": "fuzz", "version": "0"}}}).encode()
        ans = exchange(self.target.port, request("POST", "/mcp/open", {"Content-Type": "application/json",
                                                                      "Accept": "application/json"}, body))
        sid = ans.header("mcp-session-id")
        if sid is None:
            raise RuntimeError(f"initialize failed: {ans}")
        return sid

    # --- one case -----------------------------------------------------------------------------------
    def run_case(self, case: Case) -> list[str]:
        raw = case.render(self.fill)
        ans = exchange(self.target.port, raw, timeout=self.timeout, hang_up=case.hang_up)
        self.stats.cases += 1
        self.stats.statuses[ans.status] = self.stats.statuses.get(ans.status, 0) + 1
        problems = answer_problems(ans)
        if ans.status == 0:  # hung up / gave up waiting: a round trip lets the gateway finish the case first
            exchange(self.target.port, request("GET", "/healthz", {"Connection": "close"}), timeout=self.timeout)
        if b'"code":-32603' in self.sse.take():
            problems.append("JSON-RPC -32603 on the legacy SSE stream")
        problems += log_problems(self.target.new_log())
        if self.stats.cases % self.check_every == 0:
            problems += self.health()
        return problems

    def health(self) -> list[str]:
        problems = liveness_problems(self.target)
        if self.target.gateway.poll() is None:
            rss = self.target.rss_mb()
            self.stats.rss_max = max(self.stats.rss_max, rss)
            if rss > self.max_rss_mb:
                problems.append(f"RSS {rss:.0f} MB > {self.max_rss_mb:.0f} MB")
        if self.sse.stream.sock.fileno() < 0 or not self._sse_alive():
            self.sse.close()
            self.sse = SseWatch(self.target)
            self.fill["{SSE}"] = self.sse.stream.session_id
        return problems

    def _sse_alive(self) -> bool:
        ping = request("POST", f"/sse/open/messages?session_id={self.sse.stream.session_id}",
                       {"Content-Type": "application/json"}, b'{"jsonrpc":"2.0","method":"notifications/x"}')
        return exchange(self.target.port, ping).status == 202

    def check(self, case: Case) -> None:
        problems = self.run_case(case)
        if not problems:
            return
        sig = signature(problems)
        if sig in self.stats.found:  # already reported: count it, do not shrink it again
            self.stats.found[sig] += 1
            return
        self.failing, self.failing_previous = case, self.previous
        raise Found(sig, problems)

    # --- rounds -------------------------------------------------------------------------------------
    def run(self, seconds: float, max_cases: int, first_seed: int) -> Stats:
        start = time.monotonic()
        n = 0
        while time.monotonic() - start < seconds and self.stats.cases < max_cases:
            examples = min(ROUND, max_cases - self.stats.cases)
            self._round(first_seed + n, examples)
            n += 1
            if self.target.gateway.poll() is not None:
                self._report("gateway exited", [f"exit status {self.target.gateway.returncode}"], None)
                break
        for problem in self.health():
            self._report(signature([problem]), [problem], None)
        return self.stats

    def _round(self, round_seed: int, examples: int) -> None:
        @settings(database=None, max_examples=examples, deadline=None, derandomize=False, print_blob=False,
                  suppress_health_check=list(HealthCheck), phases=[Phase.generate, Phase.shrink],
                  report_multiple_bugs=False)
        @seed(round_seed)
        @given(case=cases())
        def one(case: Case) -> None:
            self.previous, self.current = self.current, case
            self.check(case)

        try:
            one()
        except Found as exc:
            self._report(exc.signature, exc.problems, self.failing)
        except FlakyFailure as exc:  # failed once, not on replay (a late log line, a timing window)
            inner = next((e for e in exc.exceptions if isinstance(e, Found)), None)
            sig = inner.signature if inner else "flaky"
            self.stats.found.setdefault(sig, 0)  # do not chase it again
            self._report(sig + " (flaky)", inner.problems if inner else [str(exc)], self.failing,
                         self.failing_previous)

    def _report(self, sig: str, problems: list[str], case: Case | None, before: Case | None = None) -> None:
        self.stats.found[sig] = self.stats.found.get(sig, 0) + 1
        raw = case.render(self.fill) if case is not None else b""
        text = (f"signature: {sig}\nproblems:\n" + "".join(f"  {p}\n" for p in problems[:40])
                + f"case: {case!r}\nraw request (repr):\n{raw!r}\n")
        if before is not None:
            text += f"(flaky: the log line may belong to the case before)\nbefore: {before.render(self.fill)!r}\n"
        self.results.mkdir(parents=True, exist_ok=True)
        path = self.results / f"fuzz-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{len(self.stats.files)}.txt"
        path.write_text(text, encoding="utf-8")
        self.stats.files.append(path)
        if not self.quiet:
            print(f"\n=== FOUND: {sig}\n{text}written to {path}", flush=True)


_NOISE = re.compile(r"^\d{4}-\d\d-\d\d \S+ |\b0x[0-9a-f]+\b|\d+")


def signature(problems: list[str]) -> str:
    """What kind of failure: the answer problem plus the last exception line in the log, numbers dropped."""
    answer = [p for p in problems if p.startswith(("HTTP ", "JSON-RPC", "RSS", "tools/call", "/healthz"))]
    answer += [p.split(":")[0] for p in problems if p.startswith("WWW-Authenticate")]
    errors = [p for p in problems if re.search(r"\w+(Error|Exception)\b", p)]
    parts = answer[:1] + errors[-1:] or problems[:1]
    return " | ".join(_NOISE.sub("#", p).strip()[:160] for p in parts)


def add_parser(sub: Any) -> None:
    fz = sub.add_parser("fuzz-frontdoor", help="fuzz a real Stile process over raw sockets (see bench/README.md)")
    fz.add_argument("--seconds", type=float, default=600.0, help="time budget (default 600)")
    fz.add_argument("--cases", type=int, default=10**9, help="stop after this many cases")
    fz.add_argument("--seed", type=int, default=0, help="first hypothesis seed (one per round of 200)")
    fz.add_argument("--timeout", type=float, default=0.3,
                    help="seconds to wait for each answer, then hang up (default 0.3)")
    fz.add_argument("--max-rss-mb", type=float, default=600.0, help="gateway + upstream RSS bound (default 600)")
    fz.add_argument("--check-every", type=int, default=50, help="liveness + RSS check every N cases (default 50)")
    fz.add_argument("--results-dir", default=str(BENCH / "results"))
    fz.add_argument("--src", default=str(BENCH.parent / "src"), help="Stile source tree to run (default ./src)")


def main(args: argparse.Namespace) -> int:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the gateway and upstream on the way out
    began = time.monotonic()
    with FuzzTarget(src=Path(args.src)) as target:
        fuzzer = Fuzzer(target, timeout=args.timeout, max_rss_mb=args.max_rss_mb, check_every=args.check_every,
                        results=Path(args.results_dir))
        stats = fuzzer.run(args.seconds, args.cases, args.seed)
        fuzzer.sse.close()
    took = time.monotonic() - began
    print(f"\nfuzz-frontdoor: {stats.cases} cases in {took:.0f} s ({stats.cases / took:.1f} cases/s); "
          f"RSS {stats.rss_start:.0f} -> max {stats.rss_max:.0f} MB")
    print("statuses: " + ", ".join(f"{k}: {v}" for k, v in sorted(stats.statuses.items())))
    for sig, count in stats.found.items():
        print(f"FOUND x{count}: {sig}")
    for path in stats.files:
        print(f"  reproducer: {path}")
    if not stats.found:
        print("no 5xx, no -32603, no traceback; /healthz and tools/call kept working")
    return 1 if stats.found else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.fuzz_frontdoor")
    add_parser(parser.add_subparsers(dest="cmd", required=True))
    sys.exit(main(parser.parse_args()))
