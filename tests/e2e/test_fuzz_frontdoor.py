"""A bounded run of the front-door fuzzer (bench/fuzz_frontdoor.py) against a real Stile process.

Fixed seeds, about 300 cases: every case must keep the oracle (no 5xx, no -32603, no traceback in the
gateway's log, /healthz and tools/call working, RSS bounded). The long run is `python -m bench fuzz-frontdoor`.
"""

from __future__ import annotations

from pathlib import Path

from bench.fuzz_frontdoor import Fuzzer, signature
from bench.fuzz_target import Answer, FuzzTarget, answer_problems, challenge_problems, log_problems


def test_bounded_fuzz_run_keeps_the_oracle(tmp_path: Path) -> None:
    with FuzzTarget() as target:
        fuzzer = Fuzzer(target, timeout=0.3, max_rss_mb=600, check_every=50, results=tmp_path, quiet=True)
        try:
            stats = fuzzer.run(seconds=25, max_cases=300, first_seed=0)
        finally:
            fuzzer.sse.close()
    found = {sig: path.read_text() for sig, path in zip(stats.found, stats.files, strict=False)}
    assert found == {}
    assert stats.cases >= 200, stats  # the budget was spent on cases, not on startup
    assert sum(n for status, n in stats.statuses.items() if 400 <= status < 500) > 50, stats.statuses
    assert stats.statuses.get(200, 0) + stats.statuses.get(202, 0) > 10, stats.statuses  # some got through


def test_the_oracle_flags_5xx_internal_errors_and_tracebacks() -> None:
    assert answer_problems(Answer(500, b"HTTP/1.1 500 x", b"")) == ["HTTP 500"]
    body = b'{"jsonrpc":"2.0","id":1,"error":{"code":-32603,"message":"internal error"}}'
    assert answer_problems(Answer(200, b"HTTP/1.1 200 OK\r\ncontent-type: application/json", body)) == [
        "JSON-RPC -32603 internal error"]
    sse = b"event: message\ndata: " + body + b"\n\n"
    assert answer_problems(Answer(200, b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream", sse)) != []
    assert answer_problems(Answer(400, b"HTTP/1.1 400 x", b'{"error":{"code":-32602}}')) == []
    log = ("INFO ok\nERROR stile.app: unhandled error on POST /mcp/open\nTraceback (most recent call last):\n"
           '  File "x.py", line 1\nValueError: Invalid IPv6 URL\n')
    problems = log_problems(log)
    assert problems[-1] == "ValueError: Invalid IPv6 URL" and len(problems) == 3
    assert log_problems("INFO fine\nWARNING Invalid HTTP request received.\n") == []
    assert signature(["HTTP 500", *problems]) == "HTTP # | ValueError: Invalid IPv# URL"
    ok = 'Bearer resource_metadata="http://127.0.0.1/.well-known/x", scope="a b", error="invalid_token"'
    assert challenge_problems(ok) == []
    assert challenge_problems('Bearer realm="stile-admin"') == []
    assert challenge_problems('Bearer resource_metadata="http://127.0.0.1:1\\"x=\\"y/x"') == []  # escaped: fine
    assert challenge_problems('Bearer resource_metadata="http://127.0.0.1:1"x="y/x"') != []
    assert challenge_problems('Bearer resource_metadata="a", error="b", error="c"') != []
