"""The supervisor's side of a hosted stdio upstream: one process per host, shared by every worker.

`StdioHost` runs the upstream as a single-process gateway would (`make_upstream`: supervision, restarts,
handshake, a pool with `replicas`) and serves it on a Unix socket (mode 0600, in the supervisor's private
runtime directory) to the workers' `HostedStdioUpstream` (frames: `stile.upstreams.hosted`). Each worker
connection's calls are separate calls of the upstream, so JSON-RPC ids never collide; progress tokens
are rewritten per connection; server->client requests go back on the connection whose call is in
flight; unsolicited notifications (`list_changed`, `resources/updated`) go to every connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
from pathlib import Path
from typing import Any

import orjson

from stile.config.model import UpstreamConfig
from stile.tasks import spawn
from stile.upstreams.base import CallOptions, Upstream
from stile.upstreams.credentials import NO_CREDENTIALS, Credentials
from stile.upstreams.factory import make_upstream
from stile.upstreams.hosted import FRAME_SLACK, START_SLACK, error_frame
from stile.wire.errors import StileError, UpstreamTimeout, UpstreamUnavailable
from stile.wire.jsonrpc import Message

log = logging.getLogger("stile.workers.stdio")
MAX_IN_FLIGHT = 4096  # calls one worker connection may have open at once
STATE_POLL = 0.5  # seconds between checks of the upstream's state (a crash, a restart with new capabilities)


class RelayedError(StileError):
    """A worker's error answer to a server->client request, passed on to the process as it was."""

    def __init__(self, error: Any) -> None:
        error = error if isinstance(error, dict) else {}
        message = error.get("message")
        super().__init__(message if isinstance(message, str) else "the client could not answer",
                         data=error.get("data"))
        code = error.get("code")
        self.jsonrpc_code = code if isinstance(code, int) else self.jsonrpc_code


class Connection:
    """One worker's connection: its frames out, and the server->client requests it has yet to answer."""

    def __init__(self, number: int, writer: asyncio.StreamWriter) -> None:
        self.number = number
        self.writer = writer
        self.asked: dict[int, asyncio.Future[Any]] = {}
        self.calls: dict[int, asyncio.Task[None]] = {}
        self._rids = itertools.count(1)

    async def send(self, frame: dict[str, Any]) -> None:
        """One whole frame per `write` (never interleaved); `drain` waits only while the worker reads slowly."""
        with contextlib.suppress(OSError):  # the worker went away: its reader cleans up
            self.writer.write(orjson.dumps(frame) + b"\n")
            await self.writer.drain()

    async def ask(self, call: int, method: str, params: dict[str, Any], timeout: float) -> dict[str, Any]:
        rid = next(self._rids)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.asked[rid] = fut
        try:
            await self.send({"op": "request", "id": call, "rid": rid, "method": method, "params": params})
            async with asyncio.timeout(timeout):
                answer = await fut
        except TimeoutError as exc:
            raise RelayedError({"message": f"no answer to {method} within {timeout:g}s"}) from exc
        finally:
            self.asked.pop(rid, None)
        if isinstance(answer, dict) and isinstance(answer.get("result"), dict):
            result: dict[str, Any] = answer["result"]
            return result
        raise RelayedError(answer.get("error") if isinstance(answer, dict) else None)

    def close(self) -> None:
        for task in self.calls.values():
            task.cancel()
        for fut in self.asked.values():
            if not fut.done():
                fut.set_result({"error": {"message": "the worker went away"}})
        self.writer.close()


def _options(raw: Any) -> dict[str, Any]:
    """The worker's call options, each checked for its type (a bad one is dropped, never a traceback)."""
    raw = raw if isinstance(raw, dict) else {}
    out: dict[str, Any] = {}
    for key in ("client_caps", "trace_headers", "extra_headers"):
        if isinstance(raw.get(key), dict):
            out[key] = raw[key]
    if isinstance(raw.get("client_info"), dict):
        out["client_info"] = raw["client_info"]
    for key in ("log_level", "affinity"):
        if isinstance(raw.get(key), str):
            out[key] = raw[key]
    if raw.get("client_era") in ("legacy", "modern"):
        out["client_era"] = raw["client_era"]
    return out


class StdioHost:
    def __init__(self, name: str, cfg: UpstreamConfig, path: Path, max_response: int,
                 credentials: Credentials = NO_CREDENTIALS) -> None:
        self.name = name
        self.cfg = cfg
        self.path = path
        self.max_response = max_response
        self.upstream: Upstream = make_upstream(name, cfg, max_response, credentials, hosted=False)
        self.upstream.on_notification = self._broadcast
        self._connections: dict[int, Connection] = {}
        self._numbers = itertools.count(1)
        self._server: asyncio.Server | None = None
        self._last_state = b""
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self._server = await asyncio.start_unix_server(self._serve, path=str(self.path),
                                                       limit=self.max_response + FRAME_SLACK)
        os.chmod(self.path, 0o600)
        self._tasks = [spawn(self._warm(), name=f"host-start-{self.name}"),
                       spawn(self._watch(), name=f"host-state-{self.name}")]

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self._connections.values()):
            conn.close()
        for task in self._tasks:
            task.cancel()
        await self.upstream.aclose()
        with contextlib.suppress(OSError):
            self.path.unlink()

    async def _warm(self) -> None:
        """Start the process now, not at the first worker's call (a failure is retried by its supervision)."""
        try:
            await self.upstream.start()
        except StileError as exc:
            log.warning("upstream %s: %s", self.name, exc.message)
        self._publish()

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(STATE_POLL)
            self._publish()

    def _state(self) -> dict[str, Any]:
        up = self.upstream
        return {"op": "state", "era": up.era, "server_info": up.server_info, "capabilities": up.capabilities,
                "instructions": up.instructions, "healthy": up.healthy, "last_error": up.last_error}

    def _publish(self) -> None:
        """Send the state to every worker when it changed."""
        state = self._state()
        encoded = orjson.dumps(state)
        if encoded != self._last_state:
            self._last_state = encoded
            for conn in list(self._connections.values()):
                spawn(conn.send(state), name=f"host-state-{self.name}")

    def _broadcast(self, method: str, msg: Message) -> None:
        for conn in list(self._connections.values()):
            spawn(conn.send({"op": "notification", "method": method, "message": msg}), name=f"host-fan-{self.name}")

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = Connection(next(self._numbers), writer)
        self._connections[conn.number] = conn
        try:
            await conn.send(self._state())
            while True:
                try:
                    line = await reader.readuntil(b"\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
                    return  # gone, or a frame over the limit: the worker reconnects and its calls fail
                try:
                    frame = orjson.loads(line)
                except orjson.JSONDecodeError:
                    log.warning("upstream %s: a worker sent non-JSON: %.200r", self.name, line)
                    continue
                if isinstance(frame, dict):
                    self._handle(conn, frame)
        finally:
            del self._connections[conn.number]
            conn.close()

    def _handle(self, conn: Connection, frame: dict[str, Any]) -> None:
        op, cid = frame.get("op"), frame.get("id")
        if op in ("call", "start") and isinstance(cid, int):
            if len(conn.calls) >= MAX_IN_FLIGHT:
                error = UpstreamUnavailable(self.name, f"more than {MAX_IN_FLIGHT} calls in flight from one worker")
                spawn(conn.send({"op": "reply", "id": cid, "error": error_frame(error)}), name="host-refuse")
                return
            work = self._call(conn, cid, frame) if op == "call" else self._start(conn, cid)
            task = spawn(work, name=f"host-{op}-{self.name}")
            conn.calls[cid] = task
            task.add_done_callback(lambda _t: conn.calls.pop(cid, None))
        elif op == "cancel" and isinstance(cid, int):
            running = conn.calls.get(cid)
            if running is not None:
                running.cancel()
        elif op == "notify" and isinstance(frame.get("method"), str):
            params = frame.get("params")
            spawn(self.upstream.notify(frame["method"], params if isinstance(params, dict) else {}),
                  name=f"host-notify-{self.name}")
        elif op == "answer" and isinstance(frame.get("rid"), int):
            fut = conn.asked.get(frame["rid"])
            if fut is not None and not fut.done():
                fut.set_result(frame)

    async def _start(self, conn: Connection, cid: int) -> None:
        try:
            async with asyncio.timeout(self.cfg.connect_timeout + START_SLACK - 1):
                await self.upstream.start()
            reply: dict[str, Any] = {"op": "reply", "id": cid, "message": {}}
        except TimeoutError:
            reply = {"op": "reply", "id": cid,
                     "error": error_frame(UpstreamTimeout(self.name, "the process did not get ready"))}
        except StileError as exc:
            reply = {"op": "reply", "id": cid, "error": error_frame(exc)}
        await conn.send(self._state())  # before the reply: the worker sees the surface it waited for
        self._publish()
        await conn.send(reply)

    async def _call(self, conn: Connection, cid: int, frame: dict[str, Any]) -> None:
        method, params = frame.get("method"), frame.get("params")
        if not isinstance(method, str) or not isinstance(params, dict):
            error = UpstreamUnavailable(self.name, "a malformed call from a worker")
            await conn.send({"op": "reply", "id": cid, "error": error_frame(error)})
            return
        raw_opts = frame.get("opts")
        raw_opts = raw_opts if isinstance(raw_opts, dict) else {}
        token = raw_opts.get("progress_token")
        host_token = None
        meta = params.get("_meta")
        if token is not None and isinstance(meta, dict):  # each worker counts its own tokens: make them unique
            host_token = f"w{conn.number}-{token}"
            params = {**params, "_meta": {**meta, "progressToken": host_token}}

        async def on_message(msg: Message) -> None:
            p = msg.get("params")
            if host_token is not None and msg.get("method") == "notifications/progress" and isinstance(p, dict):
                msg = {**msg, "params": {**p, "progressToken": token}}
            await conn.send({"op": "message", "id": cid, "message": msg})

        async def on_request(method: str, p: dict[str, Any]) -> dict[str, Any]:
            return await conn.ask(cid, method, p, self.cfg.timeout)

        opts = CallOptions(on_message=on_message, on_request=on_request, progress_token=host_token,
                           **_options(raw_opts))
        try:
            reply: dict[str, Any] = {"op": "reply", "id": cid, "message": await self.upstream.request(method, params,
                                                                                                   opts)}
        except StileError as exc:
            reply = {"op": "reply", "id": cid, "error": error_frame(exc)}
            self._publish()  # the failure may be a dead process: tell every worker now, not at the next poll
        await conn.send(reply)
