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
import errno
import logging
import os
import re
import shutil
import signal
from collections import deque
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
from stile.upstreams.causes import exit_cause
from stile.upstreams.correlate import Correlator
from stile.upstreams.credentials import NO_CREDENTIALS, Credentials
from stile.wire import jsonrpc
from stile.wire.errors import StileError, UpstreamError, UpstreamTimeout, UpstreamTooLarge, UpstreamUnavailable
from stile.wire.jsonrpc import Message

log = logging.getLogger("stile.upstream.stdio")
PROBE_TIMEOUT = 5.0
STDERR_TAIL = 3  # last stderr lines kept to explain why a process ended
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
        self._stderr_tail: deque[str] = deque(maxlen=STDERR_TAIL)
        self._attempts = 0  # process starts that ended (failed handshake or exit)
        self._failure: UpstreamUnavailable | None = None  # why the last one ended
        self._running = False  # a process is running or being started (not waiting out a backoff)
        self._changed = asyncio.Event()  # set (and replaced) when ready, or when an attempt ends

    @property
    def healthy(self) -> bool:
        return self._ready.is_set()

    async def start(self) -> None:
        """Wait until the process is ready; fail as soon as an attempt ends (exit, failed handshake).

        While the supervisor waits out its restart backoff, fail at once with the last attempt's cause.
        """
        if self._ready.is_set():
            return
        if self._supervisor is None:
            self._supervisor = spawn(self._supervise(), name=f"stdio-{self.name}")
        elif not self._running and self._failure is not None:
            raise self._failure
        seen = self._attempts
        limit = self.cfg.connect_timeout + PROBE_TIMEOUT + 1  # the handshake's own timeouts name the cause first
        try:
            async with asyncio.timeout(limit):
                while not self._ready.is_set():
                    if self._attempts > seen and self._failure is not None:
                        raise self._failure
                    await self._changed.wait()
        except TimeoutError as exc:
            raise self.unavailable(f"process not ready within {limit:g}s") from exc

    def _settle(self, failure: UpstreamUnavailable | None, *, was_ready: bool = False) -> None:
        """Ready (`failure` None), or an attempt ended. Callers fail fast only on an attempt that never got
        ready (a broken command); a crash of a ready process makes them wait for the restart instead."""
        if failure is None:
            self._ready.set()
            self._failure = None
        else:
            self._attempts += 1
            self._failure = None if was_ready else failure
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def _spawn(self) -> asyncio.subprocess.Process:
        argv = list(self.cfg.command or [])
        path = os.environ.get("PATH", os.defpath)
        exe = shutil.which(argv[0], path=self.cfg.env.get("PATH", path))
        if exe is None:
            raise FileNotFoundError(errno.ENOENT, "command not found on PATH", argv[0])
        argv[0] = exe
        env = {"PATH": path, **self._creds.env(self.name, self.cfg.env)}  # secrets as of this (re)spawn
        return await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=env, cwd=self.cfg.cwd, start_new_session=True, limit=self.max_response,
        )

    async def _supervise(self) -> None:
        delay = 0.25
        while not self._closed:
            self._running = True
            try:
                proc = self._proc = await self._spawn()
            except (OSError, UpstreamUnavailable) as exc:
                if isinstance(exc, OSError):
                    why = f"cannot start {exc.filename or (self.cfg.command or [''])[0]!r}: {exc.strerror or exc}"
                else:
                    why = f"cannot start {(self.cfg.command or [''])[0]!r}: {exc}"
                log.error("upstream %s: %s", self.name, why)
                self._settle(self.unavailable(why))
            else:
                self._stderr_tail.clear()
                readers = [spawn(self._read_stdout(proc), name=f"stdout-{self.name}"),
                           spawn(self._read_stderr(proc), name=f"stderr-{self.name}")]
                handshake: StileError | None = None
                killed = False
                try:
                    await self._handshake()
                    self._settle(None)
                    delay = 0.25
                except StileError as exc:
                    handshake = exc
                    try:  # a process that is exiting by itself reports its exit code, not our kill
                        async with asyncio.timeout(0.5):
                            await proc.wait()
                    except TimeoutError:
                        killed = self._kill()
                await proc.wait()
                self._ready.clear()
                with contextlib.suppress(TimeoutError):  # the last stderr lines, unless a grandchild holds it open
                    async with asyncio.timeout(1.0):
                        await readers[1]
                for r in readers:
                    r.cancel()
                failure = self._ended(proc, handshake, killed)
                self._rpc.fail_all(failure.cause)
                if self._closed:
                    return
                self._settle(failure, was_ready=handshake is None)
                self.restarts += 1
                log.warning("upstream %s: %s; restarting in %.2fs", self.name, self._last_error, delay)
            self._running = False
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)

    def _ended(self, proc: asyncio.subprocess.Process, handshake: StileError | None, killed: bool
               ) -> UpstreamUnavailable:
        """Why a process attempt ended: its exit code (or the failed handshake Stile killed it for), and its
        last stderr lines (those for operators only: logs, `stile check`, /readyz details)."""
        if killed and handshake is not None:
            why = handshake.cause if isinstance(handshake, UpstreamError) else handshake.message
            cause = f"handshake failed: {why}"
        else:
            cause = exit_cause(proc.returncode)
        tail = " | ".join(self._stderr_tail)
        return self.unavailable(cause, f"{cause}; last stderr: {tail}" if tail else cause)

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
                                    opts=opts)  # scrubbed as it arrived (every inbound message is)

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
            if not line:  # calls in flight (a handshake too) fail now, with the exit code, not at their timeout
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.5):
                        await proc.wait()
                self._rpc.fail_all(exit_cause(proc.returncode))
                return
            try:
                msg = jsonrpc.loads(line)
            except ValueError:
                log.warning("upstream %s wrote non-JSON to stdout: %.200r", self.name, line)
                continue
            if isinstance(msg, dict):
                self._rpc.dispatch(self._creds.scrub(self.name, msg))  # answers, progress, requests, notifications

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
            text = self._creds.scrub_text(self.name, line.decode("utf-8", "replace").rstrip())  # before cutting
            if text:
                self._stderr_tail.append(text[:300])  # shown in /readyz details, `stile check`, errors in logs
            log.info("upstream %s stderr: %s", self.name, text)

    def _kill(self) -> bool:
        proc = self._proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
                return True
        return False

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
