"""One worker of `stile serve --workers N`: today's gateway, serving the supervisor's listening socket.

The supervisor starts each worker as `stile serve ... --worker-fd FD --lifeline-fd FD` with its environment
(`stile.workers.supervisor.worker_env`): the shared session key, the worker's own STILE_REPLICA_ID, the
sockets of the hosted stdio upstreams and the bus URL. A worker

- serves the inherited socket (`--worker-fd`) with uvicorn's graceful shutdown on SIGTERM;
- seals its own audit chain and keeps its own write-ahead log and spool files, named by its replica id
  (`observe/audit_writers.py`): workers never share a file, a restarted worker (same replica id) continues
  its chain and replays what its predecessor left, and any worker replays what a slot that is gone left;
- reports itself in /metrics (`stile_worker_info`, `stile_worker_restarts`);
- tags each HTTP response with `Stile-Worker: <index>` (which worker answered; the load is the kernel's to
  spread over the accepting workers);
- stops (gracefully) when the supervisor dies: the lifeline pipe's write end is the supervisor's alone, so
  it reads end-of-file then.
"""

from __future__ import annotations

import asyncio
import os
import socket
from typing import Any

from prometheus_client import CollectorRegistry, Gauge

from stile.config.model import GatewayConfig
from stile.frontends.app import StileApp
from stile.server import prepare

INDEX_ENV = "STILE_WORKER_INDEX"
REPLICA_ENV = "STILE_REPLICA_ID"
START_ENV = "STILE_WORKER_START"  # how many times the supervisor has started this worker's slot (1 = first)
WORKER_HEADER = b"stile-worker"

ASGIApp = Any


class WorkerTag:
    """ASGI wrapper adding `Stile-Worker: <index>` to every HTTP response."""

    def __init__(self, app: ASGIApp, index: str) -> None:
        self.app = app
        self.header = (WORKER_HEADER, index.encode("ascii"))

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        header = self.header

        async def tagged(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), header]}
            await send(message)

        await self.app(scope, receive, tagged)


def worker_metrics(registry: CollectorRegistry, index: str, replica_id: str) -> None:
    """`stile_worker_info{worker, replica_id}` 1 and `stile_worker_restarts{worker}`: how often the supervisor
    restarted this worker's slot before this process (a scrape reaches one worker; the label says which)."""
    info = Gauge("stile_worker_info", "this worker of `stile serve --workers N`", ["worker", "replica_id"],
                 registry=registry)
    info.labels(index, replica_id).set(1)
    restarts = Gauge("stile_worker_restarts", "restarts of this worker slot by the supervisor", ["worker"],
                     registry=registry)
    start = os.environ.get(START_ENV, "1")
    restarts.labels(index).set(max(0, int(start) - 1) if start.isdigit() else 0)


def run_worker(cfg: GatewayConfig, *, host: str, port: int, fd: int, lifeline_fd: int | None,
               log_level: str = "info", state_url: str | None = None) -> None:
    index = os.environ.get(INDEX_ENV, "0")
    replica_id = os.environ.get(REPLICA_ENV) or f"{socket.gethostname()}-w{index}"
    server = prepare(cfg, host=host, port=port, log_level=log_level, state_url=state_url)
    app = server.config.app
    if isinstance(app, StileApp):
        worker_metrics(app.metrics.registry, index, replica_id)
    server.config.app = WorkerTag(app, index)
    sock = socket.socket(fileno=fd)

    async def serve() -> None:
        if lifeline_fd is not None:
            loop = asyncio.get_running_loop()

            def supervisor_gone() -> None:
                loop.remove_reader(lifeline_fd)
                server.should_exit = True

            loop.add_reader(lifeline_fd, supervisor_gone)
        await server.serve(sockets=[sock])

    with asyncio.Runner(loop_factory=server.config.get_loop_factory()) as runner:  # uvloop when available
        runner.run(serve())
