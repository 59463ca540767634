"""The cross-process bus: how replicas and workers reach state another process holds.

A `Bus` carries small JSON messages to one replica (by its id) or to every replica, and keeps a few
expiring shared keys (a claim, a set, a set of members that each expire). Three implementations, chosen by
`open_bus`: STILE_BUS_URL (``unix:///abs/path.sock`` for a `LocalBusServer` on this host, or ``redis://``)
wins over the config's top-level ``redis:``; with neither, `InProcessBus` (one process, nothing shared).

Every operation has a deadline and fails with `BusUnavailable` within it; nothing waits on a dead bus.
Features keep their single-process fast path: they touch the bus only when the state lives elsewhere
(`Bus.shared` is False for the in-process bus).
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Callable
from typing import Any, Protocol

REPLICA_ENV = "STILE_REPLICA_ID"
BUS_ENV = "STILE_BUS_URL"
REPLICA_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # the audit writer id rules (audit_writers)
Message = dict[str, Any]
Handler = Callable[[Message], None]


class BusUnavailable(Exception):
    """The bus could not be reached or did not answer in time."""


class Bus(Protocol):
    kind: str  # "memory", "unix" or "redis"
    replica: str  # this process's id on the bus
    shared: bool  # False: nothing outside this process can see the bus (the in-process one)

    @property
    def up(self) -> bool:
        """Connected and subscribed (the in-process bus always is)."""
        ...

    def listen(self, handler: Handler) -> None:
        """`handler` receives every message sent to this replica or to all (called on the event loop)."""
        ...

    async def start(self) -> None:
        ...

    async def aclose(self) -> None:
        ...

    async def send(self, replica: str | None, msg: Message) -> int:
        """Deliver `msg` to `replica` (None: every replica, this one included); how many processes got it."""
        ...

    async def claim(self, key: str, ttl: float) -> bool:
        """True for the first caller to claim `key` within `ttl` seconds, False for the others."""
        ...

    async def set_update(self, key: str, member: str, present: bool, ttl: float) -> None:
        """Add (present) or remove `member` of the set `key`; the whole set expires `ttl` s after its last change."""
        ...

    async def set_members(self, key: str) -> set[str]:
        ...

    async def mark(self, key: str, add: list[str], remove: list[str], ttl: float) -> int:
        """Mark members of `key` live for `ttl` s (each its own expiry), drop `remove`; how many are live."""
        ...


def replica_id() -> str:
    """STILE_REPLICA_ID if set (validated), else a random id for this process."""
    given = os.environ.get(REPLICA_ENV)
    if given:
        if not REPLICA_RE.fullmatch(given):
            raise ValueError(f"{REPLICA_ENV}={given[:80]!r}: use 1 to 64 of A-Z a-z 0-9 _ . -, "
                             "starting with a letter or digit")
        return given
    return "r" + secrets.token_hex(4)


def open_bus(redis_url: str | None = None, prefix: str = "stile:", replica: str | None = None) -> Bus:
    """STILE_BUS_URL > config `redis:` > in-process. ValueError for a URL it cannot use."""
    rid = replica or replica_id()
    url = os.environ.get(BUS_ENV) or redis_url
    if not url:
        from stile.bus.memory import InProcessBus

        return InProcessBus(rid)
    if url.startswith("unix://"):
        from stile.bus.local import LocalBusClient

        path = url.removeprefix("unix://")
        if not path.startswith("/"):
            raise ValueError(f"{BUS_ENV}={url!r}: expected unix:///absolute/path.sock")
        return LocalBusClient(path, rid)
    if url.startswith("redis://"):
        from stile.bus.redis import RedisBus

        return RedisBus(url, rid, prefix=prefix)
    raise ValueError(f"bus URL {url!r}: expected unix:///path.sock or redis://host:port/db")
