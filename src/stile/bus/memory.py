"""The default bus: one process, nothing shared, no I/O (features never use it on their fast path)."""

from __future__ import annotations

import asyncio
import time

from stile.bus import Handler, Message


class InProcessBus:
    kind = "memory"
    shared = False

    def __init__(self, replica: str) -> None:
        self.replica = replica
        self._handlers: list[Handler] = []
        self._claims: dict[str, float] = {}
        self._sets: dict[str, set[str]] = {}
        self._marks: dict[str, dict[str, float]] = {}

    @property
    def up(self) -> bool:
        return True

    def listen(self, handler: Handler) -> None:
        self._handlers.append(handler)

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        self._handlers.clear()

    async def send(self, replica: str | None, msg: Message) -> int:
        if replica is not None and replica != self.replica:
            return 0
        loop = asyncio.get_running_loop()
        for handler in self._handlers:
            loop.call_soon(handler, msg)
        return 1

    async def claim(self, key: str, ttl: float) -> bool:
        now = time.monotonic()
        if self._claims.get(key, 0.0) > now:
            return False
        self._claims = {k: v for k, v in self._claims.items() if v > now}
        self._claims[key] = now + ttl
        return True

    async def set_update(self, key: str, member: str, present: bool, ttl: float) -> None:
        members = self._sets.setdefault(key, set())
        if present:
            members.add(member)
        else:
            members.discard(member)

    async def set_members(self, key: str) -> set[str]:
        return set(self._sets.get(key, ()))

    async def mark(self, key: str, add: list[str], remove: list[str], ttl: float) -> int:
        now = time.monotonic()
        live = {m: e for m, e in self._marks.get(key, {}).items() if e > now}
        for member in add:
            live[member] = now + ttl
        for member in remove:
            live.pop(member, None)
        self._marks[key] = live
        return len(live)
