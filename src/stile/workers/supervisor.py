"""`stile serve --workers N`: one supervisor process, N worker processes sharing one listening socket.

The supervisor binds the socket once and re-executes `stile serve` N times with `--worker-fd` (the socket)
and `--lifeline-fd` (a pipe whose end-of-file tells a worker the supervisor died). It also runs what must
exist once per host: the stdio upstreams (`StdioHost`, one Unix socket each, unless `stdio_per_worker`)
and the local bus (`start_bus`). Every worker gets the same session key (generated here when none is
configured, so any worker opens any session id) and its own STILE_REPLICA_ID (`<host>-w<i>`).

A worker that dies is restarted with backoff (0.5 s doubling to 30 s; reset after a run of 30 s).
A worker whose first start fails at once
with an error code (a config or permission problem every worker would have) stops the supervisor (exit 1).
SIGTERM or SIGINT: close the listening socket, SIGTERM every worker (uvicorn drains in-flight requests,
bounded by its graceful-shutdown timeout), wait for them (at most `DRAIN_SECONDS`, then SIGKILL), stop the
stdio upstreams and the bus, exit 0. A second SIGTERM/SIGINT SIGKILLs the workers at once and exits 1.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from stile.assembly import build_vault
from stile.bus.local import LocalBusServer
from stile.config.model import GatewayConfig
from stile.observe.audit_writers import WriterIdError, writer_id
from stile.tasks import spawn
from stile.upstreams.causes import exit_cause
from stile.upstreams.credentials import NO_CREDENTIALS, Credentials
from stile.upstreams.hosted import SOCKETS_ENV
from stile.vault.credentials import VaultCredentials
from stile.vault.keyring import VaultError
from stile.workers.stdio_host import StdioHost
from stile.workers.worker import INDEX_ENV, REPLICA_ENV, START_ENV

log = logging.getLogger("stile.workers")
DRAIN_SECONDS = 15.0  # a worker's graceful shutdown (uvicorn: 5 s) plus its lifespan shutdown (audit flush)
FIRST_BACKOFF = 0.5
MAX_BACKOFF = 30.0
STABLE_SECONDS = 30.0  # a worker that ran this long restarts after FIRST_BACKOFF again
STARTUP_SECONDS = 30.0  # a first start that exits with an error code this soon stops the supervisor
BUS_ENV = "STILE_BUS_URL"
MAX_WORKERS = 256


def worker_count(text: str) -> int:
    """`--workers`: a number (1..256) or `auto` (one per CPU)."""
    if text.strip().lower() == "auto":
        return max(1, min(os.cpu_count() or 1, MAX_WORKERS))
    try:
        n = int(text)
    except ValueError:
        raise ValueError(f"--workers must be a number or auto, not {text!r}") from None
    if not 1 <= n <= MAX_WORKERS:
        raise ValueError(f"--workers must be between 1 and {MAX_WORKERS}, not {n}")
    return n


def bind(host: str, port: int) -> socket.socket:
    """The listening socket every worker accepts on."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host, port), family=family, backlog=2048)
    sock.set_inheritable(False)  # only the workers get it (pass_fds), never the stdio upstreams
    return sock


async def start_bus(runtime_dir: Path) -> tuple[dict[str, str], Callable[[], Awaitable[None]] | None]:
    """The host's Unix-socket bus for cross-worker state (`stile.bus.local`): (env for the workers, its close).

    Workers find it through STILE_BUS_URL; relayed answers, MRTR retries, fan-out, subscriptions, DELETE and
    flow histories then follow a client from worker to worker (docs/design/0009-cross-replica-state.md)."""
    path = runtime_dir / "bus.sock"
    bus = LocalBusServer(str(path))
    await bus.start()

    async def close() -> None:
        await bus.close()

    return {BUS_ENV: f"unix://{path}"}, close


@dataclass
class Slot:
    index: int
    replica_id: str
    proc: asyncio.subprocess.Process | None = None
    starts: int = 0
    task: asyncio.Task[None] | None = field(default=None, repr=False)


class Supervisor:
    def __init__(self, cfg: GatewayConfig, config: Path, *, host: str, port: int, workers: int, log_level: str,
                 state_url: str | None) -> None:
        """`config`: the file the workers load (the same one, so they build the same gateway)."""
        self.cfg = cfg
        self.config = config
        self.log_level = log_level
        self.host = host
        self.port = port
        self.state_url = state_url
        try:
            base = writer_id()[:56]  # STILE_REPLICA_ID (validated) or the host name made safe
        except WriterIdError as exc:
            raise SystemExit(f"error: {exc}") from None
        self.slots = [Slot(i, f"{base}-w{i}") for i in range(workers)]
        self._stopping = asyncio.Event()
        self._forced = asyncio.Event()
        self._signals = 0
        self.failed = False  # a worker could not start at all
        self.hosts: list[StdioHost] = []

    def worker_env(self, slot: Slot, shared: dict[str, str]) -> dict[str, str]:
        return {**os.environ, **shared, INDEX_ENV: str(slot.index), REPLICA_ENV: slot.replica_id,
                START_ENV: str(slot.starts)}

    async def run(self) -> int:
        os.environ.pop(SOCKETS_ENV, None)  # this process runs the stdio upstreams itself
        sock = bind(self.host, self.port)
        self.port = sock.getsockname()[1]  # `--port 0`: the one the kernel picked
        argv = worker_argv(self.config, host=self.host, port=self.port, log_level=self.log_level)
        lifeline_r, lifeline_w = os.pipe()
        runtime_dir = Path(tempfile.mkdtemp(prefix="stile-workers-"))  # mode 0700: only this user reaches it
        vault: VaultCredentials | None = None
        bus_close: Callable[[], Awaitable[None]] | None = None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal)
        try:
            shared = self._session_env()
            bus_env, bus_close = await start_bus(runtime_dir)
            shared.update(bus_env)
            vault = build_vault(self.cfg, self.state_url)
            if vault is not None:
                await vault.start()
            sockets = await self._start_hosts(runtime_dir, vault or NO_CREDENTIALS)
            if sockets:
                shared[SOCKETS_ENV] = orjson.dumps(sockets).decode()
            for slot in self.slots:
                slot.task = spawn(self._keep(slot, argv, sock, lifeline_r, shared), name=f"worker-{slot.index}")
            log.info("supervisor %d: %d workers on %s:%d", os.getpid(), len(self.slots), self.host, self.port)
            await self._stopping.wait()
            sock.close()  # stop accepting: connections not yet accepted are refused from here on
            forced = await self._drain()
        finally:
            sock.close()
            for host in self.hosts:
                await host.aclose()
            if bus_close is not None:
                await bus_close()
            if vault is not None:
                await vault.aclose()
            os.close(lifeline_w)
            os.close(lifeline_r)
            shutil.rmtree(runtime_dir, ignore_errors=True)
        log.info("supervisor %d: stopped%s", os.getpid(), " (forced)" if forced else "")
        return 1 if forced or self.failed else 0

    def _session_env(self) -> dict[str, str]:
        """STILE_SESSION_KEY for the workers when neither the environment nor the config sets one."""
        if os.environ.get("STILE_SESSION_KEY") or self.cfg.session_key:
            return {}
        log.info("no session key configured: the workers share one generated for this run")
        return {"STILE_SESSION_KEY": base64.b64encode(secrets.token_bytes(32)).decode()}

    async def _start_hosts(self, runtime_dir: Path, credentials: Credentials) -> dict[str, str]:
        sockets: dict[str, str] = {}
        for i, (name, up) in enumerate(self.cfg.upstreams.items()):
            if up.kind != "stdio" or up.stdio_per_worker:
                continue
            path = runtime_dir / f"stdio-{i}.sock"  # short: Unix socket paths are limited to ~100 bytes
            host = StdioHost(name, up, path, self.cfg.limits.max_upstream_response_bytes, credentials)
            await host.start()
            self.hosts.append(host)
            sockets[name] = str(path)
        return sockets

    def _on_signal(self) -> None:
        self._signals += 1
        if self._signals == 1:
            log.info("supervisor: stopping (draining the workers; signal again to kill them)")
            self._stopping.set()
        else:
            log.warning("supervisor: second signal: killing the workers")
            self._forced.set()
            self._kill_all()

    def _kill_all(self) -> None:
        for slot in self.slots:
            proc = slot.proc
            if proc is not None and proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()

    async def _drain(self) -> bool:
        """SIGTERM every worker and wait for them; True if they had to be killed."""
        for slot in self.slots:
            proc = slot.proc
            if proc is not None and proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        tasks = [s.task for s in self.slots if s.task is not None]

        async def all_stopped() -> None:
            await asyncio.gather(*tasks, return_exceptions=True)

        async def forced_stop() -> None:
            await self._forced.wait()

        waits = [spawn(all_stopped(), name="supervisor-drain"), spawn(forced_stop(), name="supervisor-forced")]
        try:
            await asyncio.wait(waits, timeout=DRAIN_SECONDS, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()
        hard = self._forced.is_set() or not all(t.done() for t in tasks)
        if hard:
            self._kill_all()
            await asyncio.gather(*tasks, return_exceptions=True)
        return hard

    async def _keep(self, slot: Slot, argv: list[str], sock: socket.socket, lifeline: int, shared: dict[str, str]
                    ) -> None:
        """Run the worker of `slot`, restarting it with backoff until the supervisor stops."""
        backoff = FIRST_BACKOFF
        fd = sock.fileno()
        argv = [*argv, "--worker-fd", str(fd), "--lifeline-fd", str(lifeline)]
        while not self._stopping.is_set():
            began = time.monotonic()
            slot.starts += 1
            try:
                proc = slot.proc = await asyncio.create_subprocess_exec(
                    *argv, env=self.worker_env(slot, shared), pass_fds=(fd, lifeline),
                    stdin=asyncio.subprocess.DEVNULL,
                    start_new_session=True)  # Ctrl-C reaches the supervisor only: it decides how workers stop
            except OSError as exc:
                log.error("worker %d: cannot start %s: %s", slot.index, argv[0], exc)
                code: int | None = None
                pid = 0
            else:
                pid = proc.pid
                log.info("worker %d started (pid %d, %s)", slot.index, pid, slot.replica_id)
                code = await proc.wait()
            if self._stopping.is_set():
                log.info("worker %d (pid %d) stopped: %s", slot.index, pid, exit_cause(code))
                return
            if slot.starts == 1 and code is not None and code > 0 and time.monotonic() - began < STARTUP_SECONDS:
                log.error("worker %d (pid %d) could not start (%s, its error is above): stopping", slot.index, pid,
                          exit_cause(code))  # a config or permission problem every worker has: no restart loop
                self.failed = True
                self._stopping.set()
                return
            if time.monotonic() - began >= STABLE_SECONDS:
                backoff = FIRST_BACKOFF
            log.warning("worker %d (pid %d) died: %s; restarting in %.1fs (start %d)", slot.index, pid,
                        exit_cause(code), backoff, slot.starts + 1)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(backoff):
                    await self._stopping.wait()
            backoff = min(backoff * 2, MAX_BACKOFF)


def worker_argv(config: Path, *, host: str, port: int, log_level: str) -> list[str]:
    return [sys.executable, "-m", "stile", "serve", "--config", str(config.resolve()), "--host", host,
            "--port", str(port), "--log-level", log_level]


def supervise(cfg: GatewayConfig, config: Path, *, host: str, port: int, workers: int, log_level: str,
              state_url: str | None) -> int:
    """Run the supervisor until it is stopped; its exit code."""
    try:
        supervisor = Supervisor(cfg, config, host=host, port=port, workers=workers, log_level=log_level,
                                state_url=state_url)
        return asyncio.run(supervisor.run())
    except VaultError as exc:
        raise SystemExit(f"error: {exc}") from None
    except OSError as exc:  # the port (taken since the check), the runtime directory, a Unix socket path
        raise SystemExit(f"error: cannot start the workers: {exc.strerror or exc}"
                         f"{f' ({exc.filename})' if exc.filename else ''}") from None
