"""stdio upstream: a supervised child process speaking newline-delimited JSON-RPC.

The child gets a cleared environment (only what config passes, plus PATH so interpreters resolve),
its own process group (killed whole on shutdown), stderr copied to the log, and is restarted with
exponential backoff if it dies. Era: `server/discover` first; any error or silence means legacy.

A stdout line longer than `max_response` bytes is never held whole: it is skipped as it arrives, and the
call it answers (its id is read from the line's head or tail, else the sole call in flight) fails with
UpstreamTooLarge; the process keeps running and being supervised.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import signal
from typing import Any

from stile.config.model import UpstreamConfig
from stile.tasks import spawn
from stile.upstreams.base import (
    DEFAULT_MAX_RESPONSE,
    DEFAULT_OPTIONS,
    CallOptions,
    UpstreamBase,
    adapt_params,
    discover_params,
    initialize_params,
    is_modern_discover,
)
from stile.upstreams.correlate import Correlator
from stile.upstreams.credentials import NO_CREDENTIALS, Credentials
from stile.wire import jsonrpc
from stile.wire.errors import StileError, UpstreamTimeout, UpstreamTooLarge, UpstreamUnavailable
from stile.wire.jsonrpc import Message

log = logging.getLogger("stile.upstream.stdio")
PROBE_TIMEOUT = 5.0
_SNIFF = 4096  # bytes kept of an oversized line's head and tail, to find the id it answers
# the id as the first member (after "jsonrpc") or the last member of the top-level object
_HEAD_ID = re.compile(rb'^\s*\{\s*(?:"jsonrpc"\s*:\s*"2\.0"\s*,\s*)?"id"\s*:\s*"([^"\\]{1,64})"')
_TAIL_ID = re.compile(rb'[,{]\s*"id"\s*:\s*"([^"\\]{1,64})"\s*\}\s*$')


class StdioUpstream(UpstreamBase):
    def __init__(self, name: str, cfg: UpstreamConfig, max_response: int = DEFAULT_MAX_RESPONSE,
                 credentials: Credentials = NO_CREDENTIALS) -> None:
        assert cfg.command is not None
        super().__init__(name, cfg, max_response)
        self._creds = credentials
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
        env = {"PATH": path, **self._creds.env(self.name, self.cfg.env)}  # secrets as of this (re)spawn
        return await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=env, cwd=self.cfg.cwd, start_new_session=True, limit=self.max_response,
        )

    async def _supervise(self) -> None:
        delay = 0.25
        while not self._closed:
            try:
                proc = self._proc = await self._spawn()
            except (OSError, UpstreamUnavailable) as exc:
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
        return self._creds.scrub(self.name, await self._rpc.call(method, adapt_params(self.era, params, opts),
                                                                 timeout=self.cfg.timeout, opts=opts))

    async def notify(self, method: str, params: dict[str, Any]) -> None:
        with contextlib.suppress(UpstreamUnavailable):
            await self._write(jsonrpc.notification(method, params))

    async def _read_stdout(self, proc: asyncio.subprocess.Process) -> None:
        out = proc.stdout
        assert out is not None
        while True:
            try:
                line = await out.readuntil(b"\n")
            except asyncio.LimitOverrunError as exc:
                await self._skip_long_line(out, exc.consumed)
                continue
            except asyncio.IncompleteReadError as exc:  # end of output; a last line without newline counts
                line = exc.partial
            if not line:
                return
            try:
                msg = jsonrpc.loads(line)
            except ValueError:
                log.warning("upstream %s wrote non-JSON to stdout: %.200r", self.name, line)
                continue
            if isinstance(msg, dict):
                self._rpc.dispatch(msg)

    async def _skip_long_line(self, out: asyncio.StreamReader, buffered: int) -> None:
        """Discard a line over `max_response` bytes (chunk by chunk) and fail the call it answers."""
        head = await out.read(min(buffered, _SNIFF))
        tail = head
        while True:
            try:
                tail = (tail + await out.readuntil(b"\n"))[-_SNIFF:]
                break
            except asyncio.LimitOverrunError as exc:
                tail = (tail + await out.read(exc.consumed))[-_SNIFF:]
            except asyncio.IncompleteReadError as exc:
                tail = (tail + exc.partial)[-_SNIFF:]
                break
        m = _HEAD_ID.match(head) or _TAIL_ID.search(tail)
        rid = m.group(1).decode("latin-1") if m else None
        error = UpstreamTooLarge(self.name, self.max_response, "stdout line")
        failed = self._rpc.fail(rid, error)
        log.error("%s: skipped%s", error.message, f" (the answer to {rid})" if failed else "")

    async def _read_stderr(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stderr is not None
        while True:
            try:
                line = await proc.stderr.readline()
            except ValueError:  # longer than the stream limit: readline dropped it
                continue
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
