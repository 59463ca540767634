"""`stile serve --workers 2` as a real process tree on loopback: a supervisor, two workers, one stdio process.

Which worker answered is the `Stile-Worker` response header; clients that open a new connection per
request let the kernel spread them over both workers (a load balancer without stickiness, in one host).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import httpx2
import pytest
import yaml
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.types import TextContent

from tests.e2e.helpers import LEGACY_HEADERS, initialize_body, modern_headers, modern_meta
from tests.support import REPO, free_port, listening_process, wait_http
from tests.workers.polling import eventually

PID_STDIO = [sys.executable, "-m", "tests.fixtures.pid_stdio"]
ERAS = ["legacy", "2026-07-28"]
ATTEMPTS = 200  # fresh connections tried before concluding one worker never answers


@dataclass
class Gateway:
    base: str
    proc: subprocess.Popen[bytes]
    dir: Path
    log: Path
    seen: set[str] = field(default_factory=set)

    @property
    def pids_file(self) -> Path:
        return self.dir / "pids"

    def stdio_pids(self, name: str = "pids") -> list[str]:
        """Every process of that stdio upstream ever started (one line each), oldest first."""
        path = self.dir / name
        return path.read_text().split() if path.exists() else []

    def live_stdio(self, name: str = "pids") -> list[str]:
        """Those still running (a handshake that timed out on a busy machine is a legitimate restart)."""
        return [p for p in self.stdio_pids(name) if alive(int(p)) and not zombie(int(p))]

    def workers(self) -> dict[str, int]:
        """{worker index: pid} of the supervisor's live children, from /proc."""
        out: dict[str, int] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                environ = (entry / "environ").read_bytes()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) != self.proc.pid:
                continue
            for item in environ.split(b"\0"):
                if item.startswith(b"STILE_WORKER_INDEX="):
                    out[item.split(b"=", 1)[1].decode()] = int(entry.name)
        return out


def environ(pid: int) -> dict[bytes, bytes]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)


def alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def zombie(pid: int) -> bool:
    """Exited, waiting to be reaped by its (new) parent."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def config(tmp: Path, slow: str | None = None) -> dict[str, Any]:
    upstreams: dict[str, Any] = {
        "pids": {"command": PID_STDIO, "cwd": str(REPO), "env": {"PIDS_FILE": str(tmp / "pids")},
                 "connect_timeout": 30},  # a busy machine starts the SDK's server slowly
        "own": {"command": PID_STDIO, "cwd": str(REPO), "env": {"PIDS_FILE": str(tmp / "own")},
                "stdio_per_worker": True, "connect_timeout": 30},
    }
    if slow is not None:
        upstreams["slow"] = {"url": slow}
    return {"upstreams": upstreams, "governance": {"pinning": "off"},  # `own` and `pids` have the same tools
            "virtual_servers": {"all": {"upstreams": list(upstreams), "auth": "none"},
                                "locked": {"upstreams": ["pids"]}}}  # needs an API key nobody has


@contextmanager
def workers_gateway(slow: str | None = None, workers: int = 2) -> Iterator[Gateway]:
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="stile-workers-test-") as tmp_name:
        tmp = Path(tmp_name)
        cfg_path = tmp / "stile.yaml"
        cfg_path.write_text(yaml.safe_dump(config(tmp, slow)), encoding="utf-8")
        log = tmp / "stile.log"
        env = {k: v for k, v in os.environ.items() if k not in ("STILE_SESSION_KEY", "STILE_REPLICA_ID")}
        with log.open("wb") as logf:
            proc = subprocess.Popen(
                [sys.executable, "-m", "stile", "serve", "--config", str(cfg_path), "--port", str(port),
                 "--workers", str(workers)], stdout=logf, stderr=subprocess.STDOUT, env=env, cwd=tmp)
            try:
                wait_http(f"http://127.0.0.1:{port}/healthz", proc, deadline_s=60, log=log)
                every_worker_serves(f"http://127.0.0.1:{port}/readyz", workers, proc, log)
                yield Gateway(f"http://127.0.0.1:{port}", proc, tmp, log)
            finally:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
                    try:
                        proc.wait(timeout=30)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait()


def every_worker_serves(url: str, workers: int, proc: subprocess.Popen[bytes], log: Path,
                        deadline_s: float = 90) -> None:
    """GET `url` on fresh connections until each worker has answered 200 (on a busy machine one starts late)."""
    import urllib.error
    import urllib.request

    seen: set[str] = set()
    end = time.monotonic() + deadline_s
    while len(seen) < workers:
        if proc.poll() is not None or time.monotonic() > end:
            raise RuntimeError(f"workers answering: {seen} of {workers}: {log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                seen.add(resp.headers.get("stile-worker", "?"))
        except urllib.error.HTTPError:
            time.sleep(0.05)  # 503: that worker's upstreams are not all discovered yet (polling another process)


@pytest.fixture(scope="module")
def gateway() -> Iterator[Gateway]:
    with workers_gateway() as gw:
        yield gw


def fresh_connections(seen: set[str]) -> httpx2.AsyncClient:
    """An SDK HTTP client that opens a new connection per request and records which worker answered."""
    async def record(response: httpx2.Response) -> None:
        tag = response.headers.get("stile-worker")
        if tag is not None:
            seen.add(tag)

    transport = httpx2.AsyncHTTPTransport(limits=httpx2.Limits(max_keepalive_connections=0))
    return httpx2.AsyncClient(transport=transport, timeout=30, event_hooks={"response": [record]})


@asynccontextmanager
async def sdk_client(url: str, mode: str, seen: set[str]) -> AsyncIterator[Client]:
    async with fresh_connections(seen) as http, Client(
            streamable_http_client(url, http_client=http, terminate_on_close=False), mode=mode) as c:  # type: ignore[arg-type]
        yield c


def text_of(result: Any) -> str:
    assert isinstance(result.content[0], TextContent), result
    out: str = result.content[0].text
    return out


def legacy_headers(sid: str | None = None) -> dict[str, str]:
    return {**LEGACY_HEADERS, "MCP-Protocol-Version": "2025-11-25", **({"Mcp-Session-Id": sid} if sid else {})}


def whoami(rid: int) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": rid, "method": "tools/call", "params": {"name": "pids__whoami", "arguments": {}}}


async def post(http: aiohttp.ClientSession, url: str, body: dict[str, Any], headers: dict[str, str]
               ) -> tuple[int, str | None, bytes, dict[str, str]]:
    async with http.post(url, json=body, headers=headers) as resp:
        return resp.status, resp.headers.get("stile-worker"), await resp.read(), dict(resp.headers)


def one_connection_per_request() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))


@pytest.mark.parametrize("mode", ERAS)
async def test_sdk_clients_of_both_eras_are_served_by_both_workers_and_one_stdio_process(
    gateway: Gateway, mode: str
) -> None:
    seen: set[str] = set()
    answers: set[str] = set()
    async with sdk_client(f"{gateway.base}/mcp/all", mode, seen) as c:
        assert "pids__whoami" in [t.name for t in (await c.list_tools()).tools]
        for _ in range(ATTEMPTS):
            answers.add(text_of(await c.call_tool("pids__whoami", {})))
            if seen >= {"0", "1"}:
                break
    assert seen >= {"0", "1"}, seen
    assert len(gateway.live_stdio()) == 1, "one process per host, not one per worker"
    assert answers == set(gateway.live_stdio()), "both workers reach the one hosted process"


async def test_stdio_per_worker_runs_one_process_in_each_worker(gateway: Gateway) -> None:
    await eventually(lambda: len(gateway.live_stdio("own")) == 2, "each worker starts its own process")
    seen: set[str] = set()
    answers: set[str] = set()
    async with sdk_client(f"{gateway.base}/mcp/all", "2026-07-28", seen) as c:
        for _ in range(ATTEMPTS):
            answers.add(text_of(await c.call_tool("own__whoami", {})))
            if len(answers) == 2:
                break
    assert answers == set(gateway.live_stdio("own"))


async def test_a_legacy_session_opened_on_one_worker_continues_on_the_other(gateway: Gateway) -> None:
    url = f"{gateway.base}/mcp/all"
    async with one_connection_per_request() as http:
        status, first, _, headers = await post(http, url, initialize_body(), LEGACY_HEADERS)
        assert status == 200 and first is not None
        sid = headers["mcp-session-id"]
        status, _, _, _ = await post(http, url, {"jsonrpc": "2.0", "method": "notifications/initialized"},
                                     legacy_headers(sid))
        assert status == 202
        for rid in range(2, ATTEMPTS):
            status, tag, body, _ = await post(http, url, whoami(rid), legacy_headers(sid))
            assert status == 200, body
            assert gateway.live_stdio()[0].encode() in body
            if tag != first:
                break
        assert tag != first, "every request landed on the worker that opened the session"


@pytest.mark.parametrize("era", ERAS)
async def test_the_workers_refuse_a_caller_without_credentials_and_a_forged_session(gateway: Gateway, era: str) -> None:
    url = f"{gateway.base}/mcp/locked"
    if era == "legacy":
        body, headers = whoami(1), legacy_headers()
    else:
        body = {**whoami(1), "params": {**whoami(1)["params"], "_meta": modern_meta()}}
        headers = modern_headers("tools/call", "pids__whoami")
    statuses: dict[str, set[int]] = {}
    async with one_connection_per_request() as http:
        for _ in range(ATTEMPTS):
            status, tag, _, _ = await post(http, url, body, headers)
            statuses.setdefault(tag or "?", set()).add(status)
            if len(statuses) == 2:
                break
        status, _, _, _ = await post(http, f"{gateway.base}/mcp/all", whoami(1), legacy_headers("forged-session-id"))
    assert statuses == {"0": {401}, "1": {401}}, statuses
    assert status in (400, 404)


async def test_each_worker_has_its_own_replica_id_and_audit_spool(gateway: Gateway) -> None:
    workers = gateway.workers()
    assert set(workers) == {"0", "1"}
    envs = [environ(pid) for pid in workers.values()]
    ids = {env[b"STILE_REPLICA_ID"].decode() for env in envs}
    assert len({env[b"STILE_SESSION_KEY"] for env in envs}) == 1  # generated by the supervisor, shared
    assert len(ids) == 2 and all(i.endswith(("-w0", "-w1")) for i in ids)
    async with one_connection_per_request() as http:
        metrics = await serving(http, gateway, "1", "/metrics")
    assert 'stile_worker_restarts{worker="1"} 0.0' in metrics
    spool = gateway.dir / "audit-spool"  # observe/audit_writers.py: wal/<writer id>/ for each writer
    await eventually(lambda: all((spool / "wal" / i).is_dir() for i in ids), "each worker's WAL directory")


async def test_a_worker_killed_with_sigkill_is_restarted_and_clients_keep_working(gateway: Gateway) -> None:
    """Last in this module: it changes the process tree (the stdio process stays the same)."""
    before = gateway.workers()
    (hosted,) = gateway.live_stdio()
    async with one_connection_per_request() as http:
        status, _, _, headers = await post(http, f"{gateway.base}/mcp/all", initialize_body(), LEGACY_HEADERS)
        sid = headers["mcp-session-id"]
        os.kill(before["0"], signal.SIGKILL)
        for mode in ERAS:  # meanwhile worker 1 serves everyone
            async with sdk_client(f"{gateway.base}/mcp/all", mode, set()) as c:
                for _ in range(3):
                    assert text_of(await c.call_tool("pids__whoami", {})) == gateway.live_stdio()[0]
        await eventually(lambda: gateway.workers().get("0") not in (None, before["0"]), "worker 0 restarted")
        metrics = await serving(http, gateway, "0", "/metrics")
        assert 'stile_worker_restarts{worker="0"} 1.0' in metrics
        assert 'stile_worker_info{replica_id=' in metrics
        for mode in ERAS:
            seen: set[str] = set()
            async with sdk_client(f"{gateway.base}/mcp/all", mode, seen) as c:
                for _ in range(ATTEMPTS):
                    assert text_of(await c.call_tool("pids__whoami", {})) == gateway.live_stdio()[0]
                    if seen >= {"0", "1"}:
                        break
            assert seen >= {"0", "1"}, seen
        status, _, body, _ = await post(http, f"{gateway.base}/mcp/all", whoami(5), legacy_headers(sid))
        assert status == 200 and gateway.live_stdio()[0].encode() in body, "the old session lives on"
    assert gateway.workers()["1"] == before["1"]
    assert gateway.live_stdio() == [hosted], "the hosted process outlives a worker"
    assert "worker 0 (pid" in gateway.log.read_text() and "died" in gateway.log.read_text()


async def serving(http: aiohttp.ClientSession, gateway: Gateway, worker: str, path: str = "/healthz",
                  deadline_s: float = 60) -> str:
    """GET `path` on fresh connections until `worker` answers (a restarted worker takes seconds to start)."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        async with http.get(f"{gateway.base}{path}") as resp:
            if resp.headers.get("stile-worker") == worker:
                return await resp.text()
    raise AssertionError(f"worker {worker} not serving within {deadline_s}s")


@pytest.fixture
def slow_upstream() -> Iterator[str]:
    port = free_port()
    with listening_process([sys.executable, "-m", "tests.fixtures.slow_server", "--port", str(port)], port,
                           cwd=REPO):
        yield f"http://127.0.0.1:{port}/mcp"


async def started_blocks(slow: str, at_least: int) -> None:
    async with Client(slow, mode="2026-07-28") as direct:
        got = await direct.call_tool("wait_for", {"key": "started", "at_least": at_least, "timeout": 30})
    assert got.structured_content is not None and got.structured_content["started"] >= at_least


async def test_sigterm_drains_an_in_flight_call_and_the_supervisor_exits_0(slow_upstream: str) -> None:
    import asyncio

    with ExitStack() as stack:
        gw = stack.enter_context(workers_gateway(slow_upstream))
        workers = gw.workers()
        async with Client(f"{gw.base}/mcp/all", mode="2026-07-28") as c:
            await c.list_tools()  # the SDK validates results against the listed output schemas: no list mid-drain
            call = asyncio.create_task(c.call_tool("slow__block", {"seconds": 2.0}))
            await started_blocks(slow_upstream, 1)
            gw.proc.send_signal(signal.SIGTERM)
            result = await call
        assert text_of(result) == "finished"
        code = await asyncio.to_thread(gw.proc.wait, 30)
        assert code == 0, gw.log.read_text()[-3000:]
        assert len(workers) == 2 and not any(map(alive, workers.values()))
        with pytest.raises(OSError):
            async with aiohttp.ClientSession() as http, http.get(f"{gw.base}/healthz"):
                pass
        assert "stopping (draining" in gw.log.read_text()


async def test_a_second_sigterm_kills_the_workers_at_once(slow_upstream: str) -> None:
    import asyncio

    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": "slow__block", "arguments": {"seconds": 60.0}, "_meta": modern_meta()}}
    with workers_gateway(slow_upstream) as gw:
        workers = gw.workers()
        async with aiohttp.ClientSession() as http:
            call = asyncio.create_task(post(http, f"{gw.base}/mcp/all", body,
                                            modern_headers("tools/call", "slow__block")))
            await started_blocks(slow_upstream, 1)
            began = time.monotonic()
            gw.proc.send_signal(signal.SIGTERM)
            await eventually(lambda: "stopping (draining" in gw.log.read_text(), "the first signal handled", 10)
            gw.proc.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(gw.proc.wait, 30)
            with pytest.raises(aiohttp.ClientError):  # the in-flight call fails (retryable), it does not hang
                await call
        assert code == 1
        assert time.monotonic() - began < 5, "it did not wait for the drain"
        assert len(workers) == 2 and not any(map(alive, workers.values()))


async def test_workers_and_the_hosted_stdio_process_stop_when_the_supervisor_is_killed() -> None:
    """SIGKILL leaves the supervisor no chance to clean up: the lifeline pipe and stdin EOF do it."""
    with workers_gateway() as gw:
        workers = gw.workers()
        await eventually(lambda: len(gw.live_stdio()) == 1, "the hosted process started")
        stdio = int(gw.live_stdio()[0])
        assert len(workers) == 2
        gw.proc.kill()
        gw.proc.wait(timeout=10)
        pids = [*workers.values(), stdio]
        await eventually(lambda: all(not alive(p) or zombie(p) for p in pids), "workers and stdio process gone", 30)


def test_workers_that_cannot_start_stop_the_supervisor_with_their_error(tmp_path: Path) -> None:
    """An unusable audit spool directory fails every worker the same way: no restart loop, exit 1."""
    cfg = {**config(tmp_path), "audit": {"spool_dir": "/dev/null/spool"}}
    path = tmp_path / "stile.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "STILE_REPLICA_ID"}
    done = subprocess.run([sys.executable, "-m", "stile", "serve", "--config", str(path), "--port", str(free_port()),
                           "--workers", "2"], capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert "not writable" in output and "could not start" in output
    assert "Traceback" not in output
    assert output.count("worker 0 started") == 1, "not restarted"
