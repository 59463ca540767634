"""stdio upstream: a supervised child process speaking newline-delimited JSON-RPC.

The child gets a cleared environment (only what config passes, plus PATH so interpreters resolve),
its own process group (killed whole on shutdown), stderr copied to the log, and is restarted with
exponential backoff if it dies. Era: `server/discover` first; any error or silence means legacy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
from typing import Any

from stile.config.model import UpstreamConfig
from stile.tasks import spawn
from stile.upstreams.base import (
    DEFAULT_OPTIONS,
    CallOptions,
    UpstreamBase,
    adapt_params,
    discover_params,
    initialize_params,
    is_modern_discover,
)
from stile.upstreams.correlate import Correlator
from stile.wire import jsonrpc
from stile.wire.errors import StileError, UpstreamTimeout, UpstreamUnavailable
from stile.wire.jsonrpc import Message

log = logging.getLogger("stile.upstream.stdio")
PROBE_TIMEOUT = 5.0
MAX_LINE = 64 * 1024 * 1024


class StdioUpstream(UpstreamBase):
    def __init__(self, name: str, cfg: UpstreamConfig) -> None:
        assert cfg.command is not None
        super().__init__(name, cfg)
        self.restarts = 0
        self._proc: asyncio.subprocess.Process | None = None
        self._rpc = Correlator(name, self._write, lambda: self.on_notification, "p")
        self._write_lock = asyncio.Lock()
        self._start_lock = asyncio.Lock()
        self._ready = asyncio.Event()
        self._supervisor: asyncio.Task[None] | None = None

    @property
    def healthy(self) -> bool:
        return self._ready.is_set()

    async def start(self) -> None:
        if self._supervisor is None:
            self._supervisor = spawn(self._supervise(), name=f"stdio-{self.name}")
        try:
            async with asyncio.timeout(self.cfg.connect_timeout + PROBE_TIMEOUT):
                await self._ready.wait()
        except TimeoutError as exc:
            raise UpstreamUnavailable(self.name, f"process not ready: {self._last_error or 'timeout'}") from exc

    async def _spawn(self) -> asyncio.subprocess.Process:
        argv = list(self.cfg.command or [])
        path = os.environ.get("PATH", os.defpath)
        exe = shutil.which(argv[0], path=self.cfg.env.get("PATH", path))
        if exe is None:
            raise FileNotFoundError(argv[0])
        argv[0] = exe
        env = {"PATH": path, **self.cfg.env}
        return await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=env, cwd=self.cfg.cwd, start_new_session=True, limit=MAX_LINE,
        )

    async def _supervise(self) -> None:
        delay = 0.25
        while not self._closed:
            try:
                proc = self._proc = await self._spawn()
            except OSError as exc:
                self._last_error = f"cannot start {self.cfg.command[0] if self.cfg.command else ''!r}: {exc}"
                log.error("upstream %s: %s", self.name, self._last_error)
            else:
                readers = [spawn(self._read_stdout(proc), name=f"stdout-{self.name}"),
                           spawn(self._read_stderr(proc), name=f"stderr-{self.name}")]
                try:
                    await self._handshake()
                    self._ready.set()
                    delay = 0.25
                except StileError as exc:
                    self._last_error = exc.message
                    log.error("upstream %s: handshake failed: %s", self.name, exc.message)
                    self._kill()
                await proc.wait()
                self._ready.clear()
                for r in readers:
                    r.cancel()
                self._rpc.fail_all("process exited")
                if self._closed:
                    return
                self.restarts += 1
                log.warning("upstream %s: process exited with %s; restarting in %.2fs",
                            self.name, proc.returncode, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)

    async def _handshake(self) -> None:
        if self.era in (None, "modern"):
            try:
                msg = await self._call("server/discover", discover_params(), timeout=PROBE_TIMEOUT)
            except UpstreamTimeout:
                msg = {}
            if is_modern_discover(msg):
                self.adopt_discover(msg["result"])
                return
            if self.era == "modern":
                raise UpstreamUnavailable(self.name, "process does not speak 2026-07-28")
            self.era = "legacy"
        msg = await self._call("initialize", initialize_params(), timeout=self.cfg.connect_timeout)
        if "result" not in msg:
            raise UpstreamUnavailable(self.name, "initialize failed")
        self.adopt_initialize(msg["result"])
        await self._write(jsonrpc.notification("notifications/initialized", {}))

    async def _write(self, msg: Message) -> None:
        proc = self._proc
        if proc is None or proc.stdin is None or proc.returncode is not None:
            raise UpstreamUnavailable(self.name, "process is not running")
        async with self._write_lock:
            try:
                proc.stdin.write(jsonrpc.dumps(msg) + b"\n")
                await proc.stdin.drain()
            except (BrokenPipeError, ConnectionResetError) as exc:
                raise UpstreamUnavailable(self.name, "process closed its input") from exc

    async def _call(self, method: str, params: dict[str, Any], *, timeout: float) -> Message:
        return await self._rpc.call(method, params, timeout=timeout)

    async def request(self, method: str, params: dict[str, Any], opts: CallOptions = DEFAULT_OPTIONS) -> Message:
        if not self._ready.is_set():
            await self.start()
        assert self.era is not None
        return await self._rpc.call(method, adapt_params(self.era, params, opts), timeout=self.cfg.timeout,
                                    opts=opts)

    async def notify(self, method: str, params: dict[str, Any]) -> None:
        with contextlib.suppress(UpstreamUnavailable):
            await self._write(jsonrpc.notification(method, params))

    async def _read_stdout(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while True:
            try:
                line = await proc.stdout.readline()
            except ValueError:
                log.error("upstream %s: line longer than %d bytes; dropping", self.name, MAX_LINE)
                continue
            if not line:
                return
            try:
                msg = jsonrpc.loads(line)
            except ValueError:
                log.warning("upstream %s wrote non-JSON to stdout: %.200r", self.name, line)
                continue
            if isinstance(msg, dict):
                self._rpc.dispatch(msg)

    async def _read_stderr(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stderr is not None
        while True:
            line = await proc.stderr.readline()
            if not line:
                return
            log.info("upstream %s stderr: %s", self.name, line.decode("utf-8", "replace").rstrip())

    def _kill(self) -> None:
        proc = self._proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)

    async def aclose(self) -> None:
        self._closed = True
        proc = self._proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                async with asyncio.timeout(3):
                    await proc.wait()
            except TimeoutError:
                self._kill()
                await proc.wait()
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
