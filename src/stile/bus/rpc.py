"""Requests between replicas over a `Bus`: `call` (an answer within a deadline), `cast` (no answer).

A message is ``{"k": kind, "f": sender, "c": call id or absent, "p": payload}``; an answer goes back to the
sender as ``{"k": "_re", "c": id, "p": result}``. Handlers are registered per kind: `on_call` handlers are
coroutines returning a JSON object (they encode their own errors in it), `on_cast` handlers are plain
callables. `call` fails with `ReplicaGone` when no process is listening on the target's channel (it died),
`BusUnavailable` when the bus is down and `TimeoutError` past the deadline: never a hang.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from stile.bus import Bus, BusUnavailable, Message
from stile.tasks import spawn

log = logging.getLogger("stile.bus")
CallHandler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
CastHandler = Callable[[dict[str, Any], str], None]
MAX_WAITING = 10_000  # calls awaiting an answer from other replicas


class ReplicaGone(Exception):
    """No process listens for the replica a request must reach."""


class Rpc:
    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.replica = bus.replica
        self._calls: dict[str, CallHandler] = {}
        self._casts: dict[str, CastHandler] = {}
        self._waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._ids = itertools.count(1)
        bus.listen(self._on_message)

    @property
    def shared(self) -> bool:
        return self.bus.shared

    def on_call(self, kind: str, handler: CallHandler) -> None:
        self._calls[kind] = handler

    def on_cast(self, kind: str, handler: CastHandler) -> None:
        """`handler(payload, sender)`; also called for this replica's own broadcasts (check the sender)."""
        self._casts[kind] = handler

    async def cast(self, replica: str | None, kind: str, payload: dict[str, Any]) -> int:
        return await self.bus.send(replica, {"k": kind, "f": self.replica, "p": payload})

    async def call(self, replica: str, kind: str, payload: dict[str, Any], timeout: float) -> dict[str, Any]:
        if len(self._waiting) >= MAX_WAITING:
            raise TimeoutError("too many calls to other replicas are waiting")
        cid = f"{self.replica}.{next(self._ids)}"
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[cid] = fut
        try:
            async with asyncio.timeout(timeout):
                got = await self.bus.send(replica, {"k": kind, "f": self.replica, "c": cid, "p": payload})
                if got == 0:
                    raise ReplicaGone(f"replica {replica} is not reachable")
                return await fut
        finally:
            self._waiting.pop(cid, None)

    def _on_message(self, msg: Message) -> None:
        kind, payload = msg.get("k"), msg.get("p")
        if not isinstance(kind, str) or not isinstance(payload, dict):
            return
        if kind == "_re":
            fut = self._waiting.get(str(msg.get("c")))
            if fut is not None and not fut.done():
                fut.set_result(payload)
            return
        sender = str(msg.get("f", ""))
        cid = msg.get("c")
        if cid is None:
            cast = self._casts.get(kind)
            if cast is not None:
                cast(payload, sender)
            return
        handler = self._calls.get(kind)
        if handler is not None and sender:
            spawn(self._answer(handler, payload, sender, str(cid)), name=f"bus-{kind}")

    async def _answer(self, handler: CallHandler, payload: dict[str, Any], sender: str, cid: str) -> None:
        result = await handler(payload)
        try:
            await self.bus.send(sender, {"k": "_re", "f": self.replica, "c": cid, "p": result})
        except BusUnavailable as exc:  # the caller times out
            log.warning("bus: cannot answer %s: %s", sender, exc)


async def announce(bus: Bus, kind: str, payload: dict[str, Any]) -> int:
    """From a short-lived process (the CLI): start `bus`, cast `kind` to every replica, close; how many got it."""
    await bus.start()
    try:
        return await Rpc(bus).cast(None, kind, payload)
    finally:
        await bus.aclose()
