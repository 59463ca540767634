"""The bus of one host: a `LocalBusServer` on a Unix socket (run by the workers' supervisor or a test) and
one `LocalBusClient` per worker process (``STILE_BUS_URL=unix:///abs/path.sock``). No extra service.

Frames are a 4-byte big-endian length and an orjson object. A client says `hello` with its replica id,
then sends numbered requests (``{"i": n, "op": ...}``) answered in kind (``{"i": n, "r": result}``); messages
for it arrive as ``{"m": message}``. The server keeps the shared keys in memory (they die with it, as the
processes that use them do). A client that is slower than MAX_BUFFER bytes of pushes is disconnected.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import struct
from typing import Any

import orjson

from stile.bus import BusUnavailable, Handler, Message
from stile.bus.memory import InProcessBus

log = logging.getLogger("stile.bus")
MAX_FRAME = 8 * 1024 * 1024
MAX_BUFFER = 16 * 1024 * 1024
_LEN = struct.Struct(">I")


def _frame(obj: Any) -> bytes:
    data = orjson.dumps(obj)
    return _LEN.pack(len(data)) + data


async def _read_frame(reader: asyncio.StreamReader) -> Any:
    (size,) = _LEN.unpack(await reader.readexactly(4))
    if size > MAX_FRAME:
        raise ValueError(f"bus frame of {size} bytes is over the limit")
    return orjson.loads(await reader.readexactly(size))


class LocalBusServer:
    """The hub of one host's bus. `await start()` listens on `path` (mode 0600), `await close()` ends it."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._server: asyncio.Server | None = None
        self._clients: dict[asyncio.StreamWriter, str] = {}
        self._store = InProcessBus("bus-server")

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)  # a stale socket of a previous run
        self._server = await asyncio.start_unix_server(self._serve, path=self.path)
        os.chmod(self.path, 0o600)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._clients):
            writer.close()
        self._clients.clear()
        if self._server is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._clients[writer] = ""
        try:
            while True:
                req = await _read_frame(reader)
                if not isinstance(req, dict):
                    break
                result = await self._op(writer, req)
                self._write(writer, {"i": req.get("i"), "r": result})
        except (OSError, asyncio.IncompleteReadError, ValueError, orjson.JSONDecodeError, KeyError, TypeError):
            pass
        finally:
            self._clients.pop(writer, None)
            writer.close()

    async def _op(self, writer: asyncio.StreamWriter, req: dict[str, Any]) -> Any:
        op = req.get("op")
        store = self._store
        if op == "hello":
            replica = str(req["replica"])
            if replica in self._clients.values():
                return False  # two processes with one id would each get the other's messages
            self._clients[writer] = replica
            return True
        if op == "send":
            target, push, count = req.get("to"), {"m": req["msg"]}, 0
            for client, replica in list(self._clients.items()):
                if replica and (target is None or replica == target):
                    self._write(client, push)
                    count += 1
            return count
        if op == "claim":
            return await store.claim(str(req["key"]), float(req["ttl"]))
        if op == "set_update":
            await store.set_update(str(req["key"]), str(req["member"]), bool(req["present"]), float(req["ttl"]))
            return True
        if op == "set_members":
            return sorted(await store.set_members(str(req["key"])))
        if op == "mark":
            return await store.mark(str(req["key"]), [str(m) for m in req["add"]], [str(m) for m in req["remove"]],
                                    float(req["ttl"]))
        raise KeyError(op)

    def _write(self, writer: asyncio.StreamWriter, obj: Any) -> None:
        if writer.transport.get_write_buffer_size() > MAX_BUFFER:
            log.warning("bus client %s is not reading; disconnected", self._clients.get(writer) or "?")
            writer.close()
            return
        writer.write(_frame(obj))


class LocalBusClient:
    kind = "unix"
    shared = True

    def __init__(self, path: str, replica: str, timeout: float = 1.0, retry_seconds: float = 0.5) -> None:
        self.path = path
        self.replica = replica
        self.timeout = timeout
        self.retry_seconds = retry_seconds
        self._handlers: list[Handler] = []
        self._writer: asyncio.StreamWriter | None = None
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._next = 0
        self._task: asyncio.Task[None] | None = None
        self._ready: asyncio.Event | None = None
        self._up = False
        self._closing = False  # set before cancelling _run(): a cancellation lost in a race still ends the loop

    @property
    def up(self) -> bool:
        return self._up

    def listen(self, handler: Handler) -> None:
        self._handlers.append(handler)

    async def start(self) -> None:
        """Connect in the background; wait at most `timeout` for the first connection (else run degraded)."""
        self._ready = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name="bus-local")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), self.timeout)

    async def aclose(self) -> None:
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=2.0)
            self._task = None
        self._drop("closed")

    async def _run(self) -> None:
        while not self._closing:
            try:
                async with asyncio.timeout(self.timeout):  # not wait_for: on 3.11 it can swallow a cancellation
                    reader, writer = await asyncio.open_unix_connection(self.path)
            except (OSError, TimeoutError) as exc:
                log.debug("bus %s: %s", self.path, exc)
                await asyncio.sleep(self.retry_seconds)
                continue
            self._writer = writer
            reading = asyncio.create_task(self._read(reader), name="bus-local-read")
            try:
                if not await self._request({"op": "hello", "replica": self.replica}):
                    log.error("bus %s: replica id %s is taken by another process (give each worker its own "
                              "STILE_REPLICA_ID); retrying", self.path, self.replica)
                    raise BusUnavailable("replica id taken")
                self._up = True
                log.info("bus %s: connected as %s", self.path, self.replica)
                if self._ready is not None:
                    self._ready.set()
                await reading
            except BusUnavailable:
                reading.cancel()
            finally:
                if self._up:
                    log.warning("bus %s: disconnected; retrying", self.path)
                self._drop("disconnected")
            await asyncio.sleep(self.retry_seconds)

    async def _read(self, reader: asyncio.StreamReader) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError, ValueError, orjson.JSONDecodeError):
            while True:
                frame = await _read_frame(reader)
                if not isinstance(frame, dict):
                    return
                if "m" in frame:
                    msg = frame["m"]
                    if isinstance(msg, dict):
                        for handler in self._handlers:
                            handler(msg)
                    continue
                fut = self._pending.pop(frame.get("i", -1), None)
                if fut is not None and not fut.done():
                    fut.set_result(frame.get("r"))

    def _drop(self, why: str) -> None:
        self._up = False
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
        pending, self._pending = self._pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(BusUnavailable(f"bus {self.path}: {why}"))

    async def _request(self, req: dict[str, Any]) -> Any:
        writer = self._writer
        if writer is None:
            raise BusUnavailable(f"bus {self.path} is not connected")
        self._next += 1
        rid = self._next
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        writer.write(_frame({**req, "i": rid}))
        try:
            return await asyncio.wait_for(fut, self.timeout)
        except TimeoutError:
            self._pending.pop(rid, None)
            raise BusUnavailable(f"bus {self.path}: no answer within {self.timeout}s") from None

    async def send(self, replica: str | None, msg: Message) -> int:
        return int(await self._request({"op": "send", "to": replica, "msg": msg}))

    async def claim(self, key: str, ttl: float) -> bool:
        return bool(await self._request({"op": "claim", "key": key, "ttl": ttl}))

    async def set_update(self, key: str, member: str, present: bool, ttl: float) -> None:
        await self._request({"op": "set_update", "key": key, "member": member, "present": present, "ttl": ttl})

    async def set_members(self, key: str) -> set[str]:
        return {str(m) for m in await self._request({"op": "set_members", "key": key})}

    async def mark(self, key: str, add: list[str], remove: list[str], ttl: float) -> int:
        return int(await self._request({"op": "mark", "key": key, "add": add, "remove": remove, "ttl": ttl}))
