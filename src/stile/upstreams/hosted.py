"""A stdio upstream the supervisor runs once per host (`stile serve --workers N`), reached over a Unix socket.

The supervisor (`stile.workers.stdio_host`) owns the process, its restarts and its handshake; each worker
holds one connection to it and multiplexes its calls on that connection. Frames are one JSON object per
line. Worker to host:

  {"op": "call", "id": n, "method": ..., "params": ..., "opts": {...}}   a request (the host adapts it)
  {"op": "start", "id": n}                                              wait until the process is ready
  {"op": "cancel", "id": n}                                             the caller gave up on call n
  {"op": "notify", "method": ..., "params": ...}                        a notification for the process
  {"op": "answer", "rid": k, "result": ... | "error": {...}}            the answer to a server->client request

Host to worker:

  {"op": "reply", "id": n, "message": {...} | "error": {...}}           the end of call (or start) n
  {"op": "message", "id": n, "message": {...}}                          progress/log of call n
  {"op": "request", "id": n, "rid": k, "method": ..., "params": ...}    a server->client request during call n
  {"op": "notification", "method": ..., "message": {...}}               unsolicited, sent to every worker
  {"op": "state", "era": ..., "healthy": ..., ...}                      the negotiated surface, on change

Progress tokens are rewritten by the host (each worker numbers its own), so workers never see each other's.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
from typing import Any

import orjson

from stile.config.model import UpstreamConfig
from stile.tasks import spawn
from stile.upstreams.base import DEFAULT_MAX_RESPONSE, DEFAULT_OPTIONS, CallOptions, UpstreamBase
from stile.wire.errors import StileError, UpstreamError, UpstreamTimeout, UpstreamUnavailable
from stile.wire.jsonrpc import Message

log = logging.getLogger("stile.upstream.hosted")
SOCKETS_ENV = "STILE_STDIO_SOCKETS"  # JSON {upstream name: Unix socket path}, set by the supervisor
FRAME_SLACK = 64 * 1024  # a frame is one upstream message (at most max_response) plus its envelope
START_SLACK = 7.0  # beyond the process's own handshake timeouts (connect_timeout + the discover probe)
OPTION_KEYS = ("client_caps", "client_info", "log_level", "client_era", "progress_token", "affinity",
               "trace_headers", "extra_headers")


def hosted_sockets() -> dict[str, str]:
    """The stdio upstreams this worker reaches through the supervisor (empty outside `--workers`)."""
    raw = os.environ.get(SOCKETS_ENV)
    if not raw:
        return {}
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        log.error("%s is not JSON: every stdio upstream runs in this worker", SOCKETS_ENV)
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, str)}


def error_frame(exc: StileError) -> dict[str, Any]:
    if isinstance(exc, UpstreamError):
        kind = "timeout" if isinstance(exc, UpstreamTimeout) else "unavailable"
        return {"kind": kind, "cause": exc.cause, "detail": exc.detail}
    return {"kind": "unavailable", "cause": exc.message, "detail": None}


def error_of(name: str, frame: Any) -> UpstreamError:
    frame = frame if isinstance(frame, dict) else {}
    cause = frame.get("cause")
    detail = frame.get("detail")
    cls = UpstreamTimeout if frame.get("kind") == "timeout" else UpstreamUnavailable
    return cls(name, cause if isinstance(cause, str) else "the hosted process failed",
               detail=detail if isinstance(detail, str) else None)


def wire_options(opts: CallOptions) -> dict[str, Any]:
    return {k: getattr(opts, k) for k in OPTION_KEYS}


class HostedStdioUpstream(UpstreamBase):
    """The worker's side: one connection to the host, many calls in flight on it."""

    def __init__(self, name: str, cfg: UpstreamConfig, path: str, max_response: int = DEFAULT_MAX_RESPONSE) -> None:
        super().__init__(name, cfg, max_response)
        self.path = path
        self._writer: asyncio.StreamWriter | None = None
        self._connect_lock = asyncio.Lock()
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Message]] = {}
        self._calls: dict[int, CallOptions] = {}
        self._host_healthy = False
        self._reader: asyncio.Task[None] | None = None

    @property
    def healthy(self) -> bool:
        return self._writer is not None and self._host_healthy

    async def start(self) -> None:
        await self._exchange({"op": "start"}, self.cfg.connect_timeout + START_SLACK, DEFAULT_OPTIONS)

    async def request(self, method: str, params: dict[str, Any], opts: CallOptions = DEFAULT_OPTIONS) -> Message:
        if not self.healthy:
            await self.start()
        frame = {"op": "call", "method": method, "params": params, "opts": wire_options(opts)}
        return await self._exchange(frame, self.cfg.timeout + START_SLACK, opts)

    async def notify(self, method: str, params: dict[str, Any]) -> None:
        with contextlib.suppress(UpstreamUnavailable):
            await self._send({"op": "notify", "method": method, "params": params})

    async def aclose(self) -> None:
        self._closed = True
        writer = self._writer
        if writer is not None:
            self._drop(writer, "the gateway is stopping")
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader

    async def _exchange(self, frame: dict[str, Any], timeout: float, opts: CallOptions) -> Message:
        rid = next(self._ids)
        fut: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        self._calls[rid] = opts
        try:
            await self._send({**frame, "id": rid})
            async with asyncio.timeout(timeout):
                return await fut
        except TimeoutError as exc:
            await self._cancel(rid)
            raise UpstreamTimeout(self.name, f"no answer from the stdio host within {timeout:g}s") from exc
        except asyncio.CancelledError:
            await self._cancel(rid)
            raise
        finally:
            self._pending.pop(rid, None)
            self._calls.pop(rid, None)

    async def _cancel(self, rid: int) -> None:
        if self._writer is not None:
            with contextlib.suppress(UpstreamUnavailable):
                await self._send({"op": "cancel", "id": rid})

    async def _connect(self) -> asyncio.StreamWriter:
        async with self._connect_lock:
            if self._writer is not None:
                return self._writer
            if self._closed:
                raise UpstreamUnavailable(self.name, "the gateway is stopping")
            try:
                async with asyncio.timeout(self.cfg.connect_timeout):
                    reader, writer = await asyncio.open_unix_connection(self.path,
                                                                        limit=self.max_response + FRAME_SLACK)
            except (OSError, TimeoutError) as exc:
                raise self.unavailable(f"the supervisor's stdio host is unreachable ({exc})") from exc
            self._writer = writer
            self._reader = spawn(self._read(reader, writer), name=f"hosted-{self.name}")
            return writer

    async def _send(self, frame: dict[str, Any]) -> None:
        writer = await self._connect()
        try:  # one whole frame per write (frames never interleave); drain waits only on a slow host
            writer.write(orjson.dumps(frame) + b"\n")
            await writer.drain()
        except OSError as exc:
            self._drop(writer, "the connection to the supervisor's stdio host broke")
            raise self.unavailable("the connection to the supervisor's stdio host broke") from exc

    async def _read(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        why = "the supervisor's stdio host closed the connection"
        try:
            while True:
                try:
                    line = await reader.readuntil(b"\n")
                except asyncio.IncompleteReadError:
                    return
                except asyncio.LimitOverrunError:
                    why = "the supervisor's stdio host sent a frame over the size limit"
                    return
                except OSError:
                    return
                try:
                    frame = orjson.loads(line)
                except orjson.JSONDecodeError:
                    log.warning("upstream %s: the stdio host sent non-JSON: %.200r", self.name, line)
                    continue
                if isinstance(frame, dict):
                    self._dispatch(frame)
        finally:
            self._drop(writer, why)

    def _drop(self, writer: asyncio.StreamWriter, why: str) -> None:
        if self._writer is writer:
            self._writer = None
            self._host_healthy = False
        writer.close()
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(self.unavailable(why))

    def _dispatch(self, frame: dict[str, Any]) -> None:
        op = frame.get("op")
        rid = frame.get("id")
        if op == "reply":
            fut = self._pending.get(rid) if isinstance(rid, int) else None
            if fut is None or fut.done():
                return
            message = frame.get("message")
            if "error" in frame or not isinstance(message, dict):
                fut.set_exception(error_of(self.name, frame.get("error")))
            else:
                fut.set_result(message)
        elif op == "message" and isinstance(frame.get("message"), dict):
            opts = self._calls.get(rid) if isinstance(rid, int) else None
            if opts is not None:
                spawn(opts.on_message(frame["message"]), name=f"notify-{self.name}")
        elif op == "request":
            opts = self._calls.get(rid, DEFAULT_OPTIONS) if isinstance(rid, int) else DEFAULT_OPTIONS
            spawn(self._answer(frame, opts), name=f"relay-{self.name}")
        elif op == "notification" and isinstance(frame.get("method"), str) and isinstance(frame.get("message"), dict):
            self.on_notification(frame["method"], frame["message"])
        elif op == "state":
            self._adopt_state(frame)

    def _adopt_state(self, frame: dict[str, Any]) -> None:
        era = frame.get("era")
        if era in ("legacy", "modern"):
            self.era = era
        server_info, capabilities = frame.get("server_info"), frame.get("capabilities")
        self.server_info = server_info if isinstance(server_info, dict) else {}
        self.capabilities = capabilities if isinstance(capabilities, dict) else {}
        instructions = frame.get("instructions")
        self.instructions = instructions if isinstance(instructions, str) else None
        self._host_healthy = frame.get("healthy") is True
        last_error = frame.get("last_error")
        self._last_error = last_error if isinstance(last_error, str) else None

    async def _answer(self, frame: dict[str, Any], opts: CallOptions) -> None:
        method, params = frame.get("method"), frame.get("params")
        reply: dict[str, Any] = {"op": "answer", "rid": frame.get("rid")}
        try:
            if not isinstance(method, str):
                raise UpstreamUnavailable(self.name, "a server->client request without a method")
            reply["result"] = await opts.on_request(method, params if isinstance(params, dict) else {})
        except StileError as exc:
            reply["error"] = exc.to_error()
        with contextlib.suppress(UpstreamUnavailable):
            await self._send(reply)
