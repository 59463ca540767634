"""Closed-loop asyncio load generator for MCP over Streamable HTTP.

``concurrency`` virtual users (VUs) each send one request, wait for the whole response, and send the
next, until the measurement window ends. Legacy era: every VU holds one MCP session (``initialize``
+ ``notifications/initialized`` once, then every request carries ``Mcp-Session-Id``; ``DELETE`` at
the end). Modern era (2026-07-28): stateless requests with ``_meta`` and the standard headers.

Latency is taken with ``perf_counter_ns`` from just before the request is written to just after the
whole body is read (for ``text/event-stream`` responses: after the stream ends, i.e. after the final
JSON-RPC response). A request counts when it starts and finishes inside the window
``[warmup, warmup + duration]``; requests during warmup are not recorded.

Two HTTP client engines, same loop:
  * ``aiohttp`` - ``aiohttp.ClientSession`` with a keep-alive pool (the documented default client);
  * ``raw``     - one keep-alive HTTP/1.1 connection per VU on an asyncio protocol + httptools; a
                  few times cheaper per request, used when aiohttp itself would be the bottleneck.

The generator also snapshots, exactly at the window edges, the CPU time of the processes it is told
to watch (``--watch-pid``), its own CPU time and the per-core busy time from ``/proc/stat``, so the
report can show CPU s per 1k requests and whether a core was saturated.

Run by the harness as a subprocess (pinned with taskset); prints one JSON object on stdout:

    python -m bench.load --url http://127.0.0.1:8000/mcp --scenario call-small --era modern \
        --concurrency 8 --duration 5 --warmup 1
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import resource
import sys
import time
from array import array
from collections import Counter
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

import httptools
import orjson
from aiohttp import ClientError

from bench.scenarios import (
    EXTRA_HEADERS,
    SCENARIOS,
    Scenario,
    initialize_request,
    initialized_notification,
    request,
)

Response = tuple[int, str, str | None, bytes]  # status, content-type, mcp-session-id, body

FULL_CHECK_MAX = 16 * 1024  # responses up to this size are always parsed and checked
SAMPLE_EVERY = 8  # larger ones: fully every Nth, else only their id (parsing list-500 costs ~0.7 ms)


class ProtocolFailure(Exception):
    pass


# --------------------------------------------------------------------------------------------------
# engines
class AiohttpEngine:
    name = "aiohttp"

    def __init__(self, url: str, concurrency: int) -> None:
        self.url = url
        self.concurrency = concurrency
        self.session: Any = None

    async def start(self) -> None:
        import aiohttp

        connector = aiohttp.TCPConnector(limit=self.concurrency, limit_per_host=self.concurrency, keepalive_timeout=60)
        self.session = aiohttp.ClientSession(connector=connector, auto_decompress=False)

    def connection(self) -> AiohttpConn:
        return AiohttpConn(self)

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()


class AiohttpConn:
    def __init__(self, engine: AiohttpEngine) -> None:
        self.engine = engine

    async def send(self, verb: str, headers: dict[str, str], body: bytes) -> Response:
        async with self.engine.session.request(verb, self.engine.url, data=body, headers=headers) as resp:
            data = await resp.read()
            h = resp.headers
            return resp.status, h.get("Content-Type", ""), h.get("Mcp-Session-Id"), data

    async def close(self) -> None:
        return None


class RawEngine:
    name = "raw"

    def __init__(self, url: str, concurrency: int) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.host_header = f"{self.host}:{self.port}"

    async def start(self) -> None:
        return None

    def connection(self) -> RawConn:
        return RawConn(self)

    async def close(self) -> None:
        return None


class _RawProtocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[Response] | None = None
        self.ctype = ""
        self.sid: str | None = None
        self.body: list[bytes] = []
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(exc)

    def on_message_begin(self) -> None:
        self.ctype = ""
        self.sid = None
        self.body = []

    def on_header(self, name: bytes, value: bytes) -> None:
        lname = name.lower()
        if lname == b"content-type":
            self.ctype = value.decode("latin-1")
        elif lname == b"mcp-session-id":
            self.sid = value.decode("latin-1")
        elif lname == b"connection" and value.lower() == b"close":
            self.closed = True

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result((self.parser.get_status_code(), self.ctype, self.sid, b"".join(self.body)))

    def _fail(self, exc: BaseException) -> None:
        self.closed = True
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(ConnectionError(f"connection failed: {exc!r}"))
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(exc or ConnectionResetError("closed by peer"))


class RawConn:
    def __init__(self, engine: RawEngine) -> None:
        self.engine = engine
        self.proto: _RawProtocol | None = None

    async def send(self, verb: str, headers: dict[str, str], body: bytes) -> Response:
        proto = self.proto
        if proto is None or proto.closed:
            loop = asyncio.get_running_loop()
            _, proto = await loop.create_connection(_RawProtocol, self.engine.host, self.engine.port)
            self.proto = proto
        eng = self.engine
        lines = [f"{verb} {eng.path} HTTP/1.1\r\nHost: {eng.host_header}\r\nContent-Length: {len(body)}\r\n"]
        lines.extend(f"{k}: {v}\r\n" for k, v in headers.items())
        lines.append("\r\n")
        fut: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        proto.waiter = fut
        assert proto.transport is not None
        proto.transport.write("".join(lines).encode("latin-1") + body)
        return await fut

    async def close(self) -> None:
        if self.proto is not None and self.proto.transport is not None:
            self.proto.transport.close()


ENGINES: dict[str, type[AiohttpEngine] | type[RawEngine]] = {"aiohttp": AiohttpEngine, "raw": RawEngine}


# --------------------------------------------------------------------------------------------------
# response checks
def sse_messages(body: bytes) -> list[Any]:
    out = []
    for block in body.replace(b"\r\n", b"\n").split(b"\n\n"):
        data = [line[5:].lstrip(b" ") for line in block.split(b"\n") if line.startswith(b"data:")]
        if data:
            payload = b"\n".join(data)
            if payload:
                out.append(orjson.loads(payload))
    return out


_ID_RE = re.compile(rb'"id"\s*:\s*("(?:[^"\\]|\\.)*"|-?\d+)')


def _cheap_id_ok(body: bytes, req_id: int) -> bool:
    head = body[:512]
    m = _ID_RE.search(head)
    return m is not None and b'"error"' not in head and orjson.loads(m.group(1)) == req_id


def check(scn: Scenario, era: str, req_id: int, resp: Response, full: bool) -> str | None:
    """None when the response is a good answer to ``req_id``; else a short failure kind."""
    status, ctype, _, body = resp
    if status != 200:
        return f"http_{status}"
    progress = 0
    if ctype.startswith("text/event-stream"):
        final = None
        others = 0
        for msg in sse_messages(body):
            if msg.get("method") == "notifications/progress":
                progress += 1
            elif msg.get("id") == req_id:
                final = msg
            elif "result" in msg or "error" in msg:
                others += 1
        if final is None:
            return "wrong_id" if others else "sse_without_response"
        msg = final
    elif not full and _cheap_id_ok(body, req_id):
        return None  # large body, not sampled: the id (and absence of an error) checked on the prefix only
    else:
        msg = orjson.loads(body)
        if msg.get("id") != req_id:
            return "wrong_id"
    if "error" in msg:
        return f"rpc_{msg['error'].get('code')}"
    result = msg.get("result")
    if not isinstance(result, dict):
        return "no_result"
    if era == "modern" and result.get("resultType", "complete") != "complete":
        return "bad_result_type"
    if result.get("isError"):
        return "tool_error"
    if scn.expect_tools is not None and len(result.get("tools", ())) != scn.expect_tools:
        return "wrong_tool_count"
    if scn.progress_steps and progress != scn.progress_steps:
        return "missing_progress"
    return None


# --------------------------------------------------------------------------------------------------
# the run
@dataclass
class Spec:
    url: str
    scenario: Scenario
    era: str
    concurrency: int
    duration: float
    warmup: float
    client: str = "raw"
    max_requests: int = 5_000_000
    request_timeout: float = 30.0
    watch: tuple[int, ...] = ()


def _proc_cpu(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        tick = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / tick  # utime + stime
    except (OSError, IndexError, ValueError):
        return None


def _cores() -> dict[str, tuple[int, int]]:
    """cpuN -> (busy ticks, total ticks) from /proc/stat."""
    out = {}
    with open("/proc/stat", "rb") as f:
        for line in f:
            if line.startswith(b"cpu") and line[3:4].isdigit():
                parts = line.split()
                vals = [int(x) for x in parts[1:]]
                idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
                out[parts[0].decode()] = (sum(vals[:8]) - idle, sum(vals[:8]))
    return out


def _self_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _snapshot(watch: tuple[int, ...]) -> dict[str, Any]:
    return {
        "t": time.perf_counter(),
        "self": _self_cpu(),
        "watch": {pid: _proc_cpu(pid) for pid in watch},
        "cores": _cores(),
    }


def percentiles(lat_ns: array[int]) -> dict[str, float]:
    if not lat_ns:
        return {}
    s = sorted(lat_ns)
    n = len(s)

    def pick(q: float) -> float:
        return s[min(n - 1, max(0, int(q * n + 0.5) - 1))] / 1000.0  # nearest rank, in microseconds

    return {
        "min": s[0] / 1000.0,
        "p50": pick(0.50),
        "p90": pick(0.90),
        "p95": pick(0.95),
        "p99": pick(0.99),
        "p999": pick(0.999),
        "max": s[-1] / 1000.0,
        "mean": sum(s) / n / 1000.0,
    }


async def run(spec: Spec) -> dict[str, Any]:
    scn, era = spec.scenario, spec.era
    engine = ENGINES[spec.client](spec.url, spec.concurrency)
    await engine.start()
    conns = [engine.connection() for _ in range(spec.concurrency)]
    sessions: list[str | None] = [None] * spec.concurrency
    errors: Counter[str] = Counter()
    samples: list[str] = []
    lat = array("q")
    counters = {"sent": 0, "ok": 0, "failed": 0}

    def note(kind: str, detail: str) -> None:
        errors[kind] += 1
        if len(samples) < 5:
            samples.append(f"{kind}: {detail[:300]}")

    # -- setup: one legacy session per VU ----------------------------------------------------------
    t_setup = time.perf_counter()

    async def open_session(i: int) -> None:
        h, b = initialize_request()
        status, _, sid, body = await conns[i].send("POST", h, b)
        if status != 200:
            raise ProtocolFailure(f"initialize -> HTTP {status}: {body[:200]!r}")
        sessions[i] = sid  # a legacy server MAY run without sessions (no Mcp-Session-Id)
        h, b = initialized_notification(sid)
        status, _, _, body = await conns[i].send("POST", h, b)
        if status not in (200, 202):
            raise ProtocolFailure(f"notifications/initialized -> HTTP {status}: {body[:200]!r}")

    if era == "legacy":
        try:
            async with asyncio.timeout(30):
                await asyncio.gather(*(open_session(i) for i in range(spec.concurrency)))
        except (ProtocolFailure, OSError, TimeoutError) as exc:
            await asyncio.gather(*(c.close() for c in conns))
            await engine.close()
            return {"fatal": f"session setup failed: {exc!r}"}
    setup_s = time.perf_counter() - t_setup

    # -- load ----------------------------------------------------------------------------------------
    loop = asyncio.get_running_loop()
    start_ns = time.perf_counter_ns()
    t_measure = start_ns + int(spec.warmup * 1e9)
    t_end = t_measure + int(spec.duration * 1e9)
    snaps: dict[str, dict[str, Any]] = {}
    ended = asyncio.Event()

    def snap(name: str) -> None:
        snaps[name] = _snapshot(spec.watch)
        if name == "end":
            ended.set()

    loop.call_at(loop.time() + spec.warmup, snap, "start")
    loop.call_at(loop.time() + spec.warmup + spec.duration, snap, "end")

    async def vu(i: int) -> None:
        conn, sid = conns[i], sessions[i]
        n = 0
        perf = time.perf_counter_ns
        while counters["sent"] < spec.max_requests:
            if perf() >= t_end:
                break
            n += 1
            counters["sent"] += 1
            req_id = i * 100_000_000 + n
            headers, body = request(scn, era, req_id, sid)
            t0 = perf()
            try:
                async with asyncio.timeout(spec.request_timeout):
                    resp = await conn.send("POST", headers, body)
            except (OSError, TimeoutError, asyncio.IncompleteReadError, ClientError) as exc:
                note(type(exc).__name__, repr(exc))
                counters["failed"] += 1
                if counters["ok"] == 0 and counters["failed"] > 1000:
                    return  # the target is down: stop hammering it
                continue
            t1 = perf()
            full = len(resp[3]) <= FULL_CHECK_MAX or n % SAMPLE_EVERY == 1
            try:
                bad = check(scn, era, req_id, resp, full)
            except (orjson.JSONDecodeError, AttributeError, TypeError) as exc:
                bad = f"unparseable:{type(exc).__name__}"
            if bad is not None:
                note(bad, resp[3][:300].decode("utf-8", "replace"))
                counters["failed"] += 1
                continue
            if t0 >= t_measure and t1 <= t_end:
                lat.append(t1 - t0)
                counters["ok"] += 1

    try:
        async with asyncio.timeout(spec.warmup + spec.duration + spec.request_timeout + 10):
            await asyncio.gather(*(vu(i) for i in range(spec.concurrency)))
    except TimeoutError:
        note("run_timeout", "the run did not finish in time")
    # let the end snapshot fire if every VU stopped early
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(max(0.0, (t_end - time.perf_counter_ns()) / 1e9) + 1.0):
            await ended.wait()

    # -- teardown ------------------------------------------------------------------------------------
    if era == "legacy":

        async def close_session(i: int) -> None:
            sid = sessions[i]
            if sid is not None:
                with contextlib.suppress(Exception):
                    end_headers = {"Mcp-Session-Id": sid, "MCP-Protocol-Version": "2025-11-25", **EXTRA_HEADERS}
                    await conns[i].send("DELETE", end_headers, b"")

        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10):
                await asyncio.gather(*(close_session(i) for i in range(spec.concurrency)))
    await asyncio.gather(*(c.close() for c in conns), return_exceptions=True)
    await engine.close()

    start, end = snaps.get("start"), snaps.get("end")
    window = (end["t"] - start["t"]) if start and end else spec.duration
    out: dict[str, Any] = {
        "client": spec.client,
        "scenario": scn.name,
        "era": era,
        "concurrency": spec.concurrency,
        "legacy_sessions": sum(1 for x in sessions if x is not None),
        "window_s": window,
        "setup_s": setup_s,
        "ok": counters["ok"],
        "sent": counters["sent"],
        "failed": counters["failed"],
        "errors": dict(errors),
        "error_samples": samples,
        "rps": counters["ok"] / window if window > 0 else 0.0,
        "latency_us": percentiles(lat),
    }
    if start and end:
        out["gen_cpu_s"] = end["self"] - start["self"]
        out["watch_cpu_s"] = {
            str(pid): (end["watch"][pid] - start["watch"][pid])
            if end["watch"][pid] is not None and start["watch"][pid] is not None
            else None
            for pid in spec.watch
        }
        cores = {}
        for cpu, (busy1, total1) in end["cores"].items():
            busy0, total0 = start["cores"].get(cpu, (busy1, total1))
            cores[cpu] = (busy1 - busy0) / (total1 - total0) if total1 > total0 else None
        out["core_busy"] = cores
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.load", description="closed-loop MCP load generator")
    p.add_argument("--url", required=True)
    p.add_argument("--scenario", choices=sorted(SCENARIOS), default="call-small")
    p.add_argument("--era", choices=["legacy", "modern"], default="modern")
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--client", choices=sorted(ENGINES), default="raw")
    p.add_argument("--max-requests", type=int, default=5_000_000)
    p.add_argument("--request-timeout", type=float, default=30.0)
    p.add_argument("--expect-tools", type=int, default=None, help="override the scenario's tool count check")
    p.add_argument("--tool", default=None, help="override the tool name (a peer that renames tools)")
    p.add_argument("--watch-pid", type=int, action="append", default=[])
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    host = urlsplit(args.url).hostname
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(orjson.dumps({"fatal": f"refusing to load a non-loopback host {host!r}"}).decode())
        return 2
    if not (0 < args.duration <= 600 and 0 <= args.warmup <= 60 and 0 < args.concurrency <= 4096):
        print(orjson.dumps({"fatal": "duration/warmup/concurrency out of bounds"}).decode())
        return 2
    scn = SCENARIOS[args.scenario]
    if args.expect_tools is not None:
        scn = replace(scn, expect_tools=args.expect_tools)
    if args.tool is not None and scn.tool is not None:
        scn = replace(scn, tool=args.tool)
    spec = Spec(
        url=args.url,
        scenario=scn,
        era=args.era,
        concurrency=args.concurrency,
        duration=args.duration,
        warmup=args.warmup,
        client=args.client,
        max_requests=args.max_requests,
        request_timeout=args.request_timeout,
        watch=tuple(args.watch_pid),
    )
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    result = asyncio.run(run(spec))
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
