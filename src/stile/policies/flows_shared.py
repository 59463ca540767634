"""Flow histories every replica and worker sees: `labels_seen` kept on the bus (Redis or a host's Unix bus).

A legacy session's consecutive calls may land on different replicas, and a modern principal's calls do
all the time, so a history kept per process would let an agent read private data on one replica and send
it out through another. With a shared bus (`Bus.shared`), each history is one expiring set on the bus
(`flows:<sha256 of the history key>`, members the labels): a labelled call reads the set (one round trip),
and an admitted one adds its labels and pushes the expiry `window_s` past this call (one round trip per
label, concurrently). The process-local `History` is kept beside it and unioned in, so what this process
saw counts even while the bus is down; then the policy is degraded to that (logged once per outage), not
refusing: the flows protect a well-meaning agent from injected instructions, and a bus outage must not
stop every labelled tool. Without a shared bus nothing here runs (the in-process history is exact).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from typing import Any

import orjson

from stile.bus import Bus, BusUnavailable

log = logging.getLogger("stile.flows")


def bus_key(key: tuple[Any, ...]) -> str:
    """The bus key of a history (hashed: client-chosen hints and names never become key text)."""
    return "flows:" + hashlib.sha256(orjson.dumps(list(key))).hexdigest()


class SharedHistory:
    def __init__(self, bus: Bus, max_labels: int, window_s: float) -> None:
        self.bus = bus
        self.max_labels = max_labels
        self.window_s = window_s
        self.degraded = False

    def _down(self, exc: BusUnavailable) -> None:
        if not self.degraded:
            log.warning("flows: the bus is unavailable (%s); flow histories are this process's own until it "
                        "returns", exc)
        self.degraded = True

    async def seen(self, key: tuple[Any, ...]) -> set[str]:
        try:
            got = await self.bus.set_members(bus_key(key))
        except BusUnavailable as exc:
            self._down(exc)
            return set()
        self.degraded = False
        return set(list(got)[: self.max_labels])

    async def add(self, key: tuple[Any, ...], labels: frozenset[str], seen: set[str]) -> None:
        new = sorted(labels - seen)[: max(0, self.max_labels - len(seen))]
        members = sorted(labels & seen) + new  # known ones too: each update pushes the expiry past this call
        if not members:
            return
        name = bus_key(key)
        try:
            await asyncio.gather(*(self.bus.set_update(name, m, True, self.window_s) for m in members))
        except BusUnavailable as exc:
            self._down(exc)
