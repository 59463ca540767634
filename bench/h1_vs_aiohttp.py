"""Micro-benchmark: ``stile.upstreams.h1.H1Pool`` vs ``aiohttp.ClientSession`` as an upstream client.

Starts ``bench.upstream_fast`` pinned to one core, then runs each client in its own process pinned to
another core (uvloop), with ``--concurrency`` loops each sending a modern MCP ``tools/call`` (echo) and
reading the whole answer, for ``--seconds`` after a warm-up. Clients alternate, ``--repeats`` times;
the report gives medians of requests/s and of client CPU µs per request (process CPU time / requests).
On a shared machine CPU µs per request is the robust figure: requests/s also depends on whether the
upstream's core is free.

    python -m bench.h1_vs_aiohttp [--seconds 5] [--repeats 3] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable

from bench.procs import PY, REPO, Procs, Unavailable, taskset

BODY = (
    b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hi"},'
    b'"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28",'
    b'"io.modelcontextprotocol/clientCapabilities":{}}}}'
)
HEADERS = {
    "Content-Type": "application/json",
    "Accept": "application/json, text/event-stream",
    "MCP-Protocol-Version": "2026-07-28",
    "Mcp-Method": "tools/call",
    "Mcp-Name": "echo",
}
CLIENTS = ("h1", "aiohttp")


Call = Callable[[], Awaitable[bytes]]
Close = Callable[[], Awaitable[None]]


async def _client(name: str, url: str, max_connections: int) -> tuple[Call, Close]:
    """(one request -> response body, close) for the named client."""
    if name == "h1":
        from stile.upstreams.h1 import H1Pool

        pool = H1Pool(url, max_connections=max_connections)

        async def call_h1() -> bytes:
            async with await pool.request("POST", HEADERS, BODY) as resp:
                if resp.status != 200:
                    raise RuntimeError(f"HTTP {resp.status}")
                return await resp.read()

        return call_h1, pool.aclose
    import aiohttp

    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=max_connections, keepalive_timeout=60))

    async def call_aiohttp() -> bytes:
        async with session.post(url, data=BODY, headers=HEADERS) as resp:
            if resp.status != 200:
                raise RuntimeError(f"HTTP {resp.status}")
            return await resp.read()

    return call_aiohttp, session.close


async def _measure(name: str, url: str, seconds: float, warmup: float, concurrency: int) -> dict[str, float]:
    call, close = await _client(name, url, max_connections=concurrency)
    try:
        first = json.loads(await call())
        if first.get("result", {}).get("content", [{}])[0].get("text") != "hi":
            raise RuntimeError(f"unexpected answer: {first}")
        count = 0
        counting = False
        stop = False

        async def loop() -> None:
            nonlocal count
            while not stop:
                await call()
                if counting:
                    count += 1

        tasks = [asyncio.create_task(loop()) for _ in range(concurrency)]
        await asyncio.sleep(warmup)
        counting = True
        cpu0, t0 = time.process_time(), time.perf_counter()
        await asyncio.sleep(seconds)
        cpu1, t1 = time.process_time(), time.perf_counter()
        counting = False
        stop = True
        await asyncio.gather(*tasks)
        n = count
    finally:
        await close()
    return {
        "requests": n,
        "rps": n / (t1 - t0),
        "cpu_us_per_req": (cpu1 - cpu0) / max(n, 1) * 1e6,
        "cpu_share": (cpu1 - cpu0) / (t1 - t0),
    }


def _worker(args: argparse.Namespace) -> int:
    import uvloop

    result = uvloop.run(_measure(args.worker, args.url, args.seconds, args.warmup, args.concurrency))
    print(json.dumps(result), flush=True)
    return 0


def _run_client(name: str, url: str, args: argparse.Namespace) -> dict[str, float]:
    argv = [
        PY,
        "-m",
        "bench.h1_vs_aiohttp",
        "--worker",
        name,
        "--url",
        url,
        "--seconds",
        str(args.seconds),
        "--warmup",
        str(args.warmup),
        "--concurrency",
        str(args.concurrency),
    ]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "src"), str(REPO)]))
    out = subprocess.run(
        taskset(args.client_cores, argv),
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=args.seconds + args.warmup + 60,
    )
    if out.returncode != 0:
        raise RuntimeError(f"{name} worker failed: {out.stderr[-2000:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.h1_vs_aiohttp", description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=5.0, help="measured seconds per run")
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--concurrency", type=int, default=32, help="concurrent request loops (and pool size)")
    p.add_argument("--clients", default=",".join(CLIENTS), help="comma-separated subset of h1,aiohttp")
    p.add_argument("--client-core", type=int, default=0)
    p.add_argument("--server-core", type=int, default=1)
    p.add_argument("--worker", choices=CLIENTS, help=argparse.SUPPRESS)
    p.add_argument("--url", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return _worker(args)
    pin = (os.cpu_count() or 1) > max(args.client_core, args.server_core)
    args.client_cores = (args.client_core,) if pin else ()
    clients = [c for c in args.clients.split(",") if c]

    procs = Procs()
    try:
        upstream = procs.start(
            "upstream_fast",
            taskset((args.server_core,) if pin else (), [PY, "-m", "bench.upstream_fast", "--port", "0"]),
        )
        port = procs.wait_ready_line(upstream)
        url = f"http://127.0.0.1:{port}/mcp"
        print(
            f"upstream_fast on core {args.server_core if pin else '-'} at {url}; clients on core "
            f"{args.client_core if pin else '-'} (uvloop), {args.concurrency} loops, {args.seconds:g}s x "
            f"{args.repeats}; load average {os.getloadavg()[0]:.2f}",
            file=sys.stderr,
        )
        runs: dict[str, list[dict[str, float]]] = {c: [] for c in clients}
        for i in range(args.repeats):
            for name in clients:
                r = _run_client(name, url, args)
                runs[name].append(r)
                print(
                    f"  run {i + 1} {name:8s} {r['rps']:9.0f} req/s {r['cpu_us_per_req']:7.1f} µs CPU/req "
                    f"(client CPU {r['cpu_share']:.0%})",
                    file=sys.stderr,
                )
    except Unavailable as exc:
        print(f"cannot run: {exc}", file=sys.stderr)
        return 1
    finally:
        procs.stop_all()

    print(f"\n{'client':10s} {'req/s (median)':>15s} {'CPU µs/req (median)':>20s}")
    med = {
        n: (statistics.median(r["rps"] for r in rs), statistics.median(r["cpu_us_per_req"] for r in rs))
        for n, rs in runs.items()
    }
    for name, (rps, cpu) in med.items():
        print(f"{name:10s} {rps:15.0f} {cpu:20.1f}")
    if "h1" in med and "aiohttp" in med:
        print(f"\nH1Pool uses {med['aiohttp'][1] / med['h1'][1]:.2f}x less client CPU per request than aiohttp")
    return 0


if __name__ == "__main__":
    sys.exit(main())
