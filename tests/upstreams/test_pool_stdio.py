"""`replicas: N` of a stdio upstream: N real processes, balanced; one killed costs no read-only call."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

from stile.config.model import UpstreamConfig
from stile.upstreams.factory import make_upstream
from stile.upstreams.pool import PooledUpstream
from stile.upstreams.stdio import StdioUpstream
from tests.support import REPO

CMD = [sys.executable, "-m", "stile.examples_servers.files_server"]


def pids(pool: PooledUpstream) -> list[int]:
    out = []
    for ep in pool.endpoints:
        assert isinstance(ep.member, StdioUpstream) and ep.member._proc is not None
        out.append(ep.member._proc.pid)
    return out


async def test_replicas_are_separate_processes_and_survive_one_being_killed() -> None:
    cfg = UpstreamConfig(command=CMD, replicas=3, env={"FILES_ROOT": str(REPO / "examples")},
                         breaker={"failures": 1, "open_seconds": 30})
    pool = make_upstream("files", cfg)
    assert isinstance(pool, PooledUpstream)
    try:
        async with asyncio.timeout(60):
            await pool.start()
        assert len(set(pids(pool))) == 3
        tools = await pool.request("tools/list", {})
        assert "read_env" in [t["name"] for t in tools["result"]["tools"]]
        victim = pids(pool)[1]
        os.killpg(victim, signal.SIGKILL)
        call = {"name": "read_env", "arguments": {"name": "FILES_ROOT"}}
        replies = await asyncio.gather(*(pool.request("tools/call", call) for _ in range(12)))
        assert all(r["result"]["content"][0]["text"].endswith("examples") for r in replies), replies
    finally:
        await pool.aclose()
