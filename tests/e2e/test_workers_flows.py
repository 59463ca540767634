"""The cross-process flows under `stile serve --workers 2` on one host with no Redis: the supervisor's own
Unix-socket bus carries what a client could notice (relayed sampling/elicitation answers, input_required
retries, list_changed) between the workers.

The SDK clients open a new connection for every request (no keep-alive), so the kernel spreads their
requests over both workers; each answer's `Stile-Worker` header is recorded to show that it did.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import httpx2
import pytest
import yaml
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tests.e2e.cluster_fixtures import cluster_config, upstreams
from tests.e2e.cluster_flows import on_elicitation, on_sampling, text_of
from tests.support import REPO, free_port, stop, wait_http


@contextmanager
def two_workers() -> Iterator[str]:
    port = free_port()
    with upstreams() as ups, tempfile.TemporaryDirectory(prefix="stile-workers-flows-") as tmp:
        path = Path(tmp) / "stile.yaml"
        path.write_text(yaml.safe_dump({**cluster_config(ups), "state": f"sqlite:///{tmp}/state.db"}),
                        encoding="utf-8")
        log = Path(tmp) / "stile.log"
        env = {k: v for k, v in os.environ.items() if k not in ("STILE_SESSION_KEY", "STILE_REPLICA_ID",
                                                                 "STILE_BUS_URL")}
        with log.open("wb") as logf:
            proc = subprocess.Popen([sys.executable, "-m", "stile", "serve", "--config", str(path), "--port",
                                     str(port), "--workers", "2"], stdout=logf, stderr=subprocess.STDOUT, env=env,
                                    cwd=REPO)
            try:
                wait_http(f"http://127.0.0.1:{port}/healthz", proc, log=log)
                yield f"http://127.0.0.1:{port}"
            finally:
                stop(proc)


@pytest.fixture(scope="module")
def base() -> Iterator[str]:
    with two_workers() as url:
        yield url


@asynccontextmanager
async def client(base: str, mode: str, workers: set[str]) -> AsyncIterator[Client]:
    async def seen(response: httpx2.Response) -> None:
        workers.add(response.headers.get("stile-worker", "?"))

    async with httpx2.AsyncClient(timeout=30, limits=httpx2.Limits(max_keepalive_connections=0),
                                  event_hooks={"response": [seen]}) as http:
        transport = streamable_http_client(f"{base}/mcp/open", http_client=http, terminate_on_close=False)
        async with Client(transport, mode=mode, sampling_callback=on_sampling,  # type: ignore[arg-type]
                          elicitation_callback=on_elicitation) as c:  # type: ignore[arg-type]
            yield c


async def test_sampling_and_elicitation_answers_reach_the_worker_that_asked(base: str) -> None:
    workers: set[str] = set()
    async with client(base, "legacy", workers) as c:
        for i in range(8):  # each answer POST is a new connection: often accepted by the other worker
            got = await c.call_tool("fx__test_sampling", {"prompt": f"q{i}"})
            assert text_of(got) == f"LLM response: sampled<q{i}>"
        elicited = await c.call_tool("fx__test_elicitation", {"message": "Who are you?"})
        assert json.loads(text_of(elicited).split("content=", 1)[1]) == {"username": "Ada", "email": "Ada"}
    assert workers == {"0", "1"}, workers


async def test_a_modern_clients_input_required_retries_land_on_either_worker(base: str) -> None:
    workers: set[str] = set()
    async with client(base, "2026-07-28", workers) as c:
        for i in range(8):
            got = await c.call_tool("fxl__test_sampling", {"prompt": f"m{i}"})
            assert text_of(got) == f"LLM response: sampled<m{i}>"
    assert workers == {"0", "1"}, workers


async def test_the_readyz_of_each_worker_reports_the_hosts_bus_up(base: str) -> None:
    found: dict[str, Any] = {}
    async with httpx2.AsyncClient(timeout=10, limits=httpx2.Limits(max_keepalive_connections=0)) as http:
        for _ in range(40):
            r = await http.get(f"{base}/readyz")
            found[r.headers["stile-worker"]] = r.json().get("bus")
            if len(found) == 2:
                break
    assert set(found) == {"0", "1"}
    assert all(b["kind"] == "unix" and b["up"] for b in found.values()), found
