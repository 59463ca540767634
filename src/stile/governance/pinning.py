"""Pinning: record each upstream definition's hash on first sight; hide or flag what changes later.

`Pinning` is the gateway's `inventory_filter`: after an upstream's lists are fetched it reads the pin
table (`stores/pins.py`), records the first-seen pins of an upstream it has never seen, and for each
tool, prompt and resource template compares the definition hash (`canonical.pin_hash`) with the approved
one (`governance.pins` in config wins over the store). An item whose hash differs (changed) or that has
no approval (new after first sight, or revoked) is recorded as pending and reported; under `block` it is
dropped from the inventory (absent from lists; calling it answers like an unknown tool), under `flag` it
stays. New tools are also compared with the other upstreams' tools (`lookalike`).

Approvals made elsewhere (`stile pins approve`, another replica) are picked up when the upstream is next
discovered, and by a poll that re-reads the table every `governance.pin_poll_seconds` and re-discovers
each upstream whose approvals changed. Nothing here runs on the request path.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from stile.config.governance import GovernanceConfig, format_ref
from stile.core.catalog import Inventory, Item
from stile.governance.canonical import INVENTORY_FIELD, KEY_FIELD, canonical_json, definition, pin_hash
from stile.governance.lookalike import Lookalike, Tool, lookalikes
from stile.stores.pins import SEEN, PinRow, PinStore

log = logging.getLogger("stile.pins")
STORE_TIMEOUT = 5.0  # seconds one pin-store read or write may hold up a discovery
INLINE_COMPARISONS = 20_000  # new x existing tools compared on the event loop; more go to a worker thread
MAX_LOOKALIKE_REPORTS = 50  # per discovery: logged, audited and counted; the rest is one summary line
Key = tuple[str, str, str]  # upstream, kind, name


@dataclass(frozen=True)
class PinEvent:
    """Something pinning noticed: `status` changed | new (an unapproved definition), or lookalike."""

    status: str
    kind: str
    upstream: str
    name: str
    action: str  # hidden | flagged
    digest: str = ""
    approved: str | None = None
    detail: str = ""

    @property
    def ref(self) -> str:
        return format_ref(self.kind, self.upstream, self.name)


@dataclass
class _Seen:
    """What one discovery offered, hashed."""

    items: dict[Key, tuple[str, str, Item]] = field(default_factory=dict)  # key -> (hash, canonical def, item)


def _hashed(upstream: str, inv: Inventory) -> _Seen:
    seen = _Seen()
    for kind, attr in INVENTORY_FIELD.items():
        for item in getattr(inv, attr):
            name = item.get(KEY_FIELD[kind])
            if isinstance(name, str):
                seen.items[(upstream, kind, name)] = (pin_hash(kind, item), canonical_json(definition(kind, item)),
                                                      item)
    return seen


def _approvals(rows: list[PinRow], upstream: str) -> frozenset[tuple[str, str, str | None]]:
    return frozenset((r.kind, r.name, r.approved) for r in rows if r.upstream == upstream)


def _described(row: PinRow) -> str | None:
    with contextlib.suppress(ValueError, TypeError):
        value = json.loads(row.approved_definition or "{}")
        text = value.get("description")
        return text if isinstance(text, str) else None
    return None


def _merged(rows: list[PinRow], adds: list[PinRow],
            pending: list[tuple[Key, str | None, str | None]]) -> list[PinRow]:
    """The table as this replica just wrote it (the fallback while the store is down)."""
    by_key = {r.key: r for r in rows}
    for row in adds:
        by_key.setdefault(row.key, row)
    for key, digest, canon in pending:
        by_key[key] = replace(by_key.get(key) or PinRow(*key), pending=digest, pending_definition=canon)
    return list(by_key.values())


class Pinning:
    """The inventory filter that enforces pins (see the module docstring)."""

    def __init__(self, cfg: GovernanceConfig, store: PinStore, report: Callable[[PinEvent], None]) -> None:
        self.cfg = cfg
        self.mode = cfg.pinning
        self.store = store
        self.report = report
        self.config_pins = cfg.pin_index()
        self.on_change: Callable[[str], Awaitable[Any]] | None = None  # re-discover an upstream
        self._rows: list[PinRow] = []  # the table as last read (the fallback while the store is down)
        self._snapshot: dict[str, frozenset[tuple[str, str, str | None]]] = {}
        self._latest: dict[str, list[Tool]] = {}  # tools each upstream offers now, for lookalikes
        self._reported: set[tuple[Key, str]] = set()
        self._lookalikes: set[tuple[str, str]] = set()
        self._poller: asyncio.Task[None] | None = None

    # --- the filter ------------------------------------------------------------------------------
    async def __call__(self, upstream: str, inv: Inventory) -> Inventory:
        if not inv.ok:
            return inv
        seen = _hashed(upstream, inv)
        writable = True
        try:
            async with asyncio.timeout(STORE_TIMEOUT):
                rows = await self.store.rows()
            self._rows = rows
        except (SQLAlchemyError, OSError, TimeoutError) as exc:
            log.error("pins: cannot read the pin store (%s); using the pins last read", exc)
            rows, writable = self._rows, False
        by_key = {r.key: r for r in rows}
        first_sight = writable and (upstream, SEEN, "") not in by_key
        adds: list[PinRow] = []
        pending: list[tuple[Key, str | None, str | None]] = []
        dropped: set[Key] = set()
        recorded_tools: list[Tool] = []
        for key, (digest, canon, item) in seen.items.items():
            row = by_key.get(key)
            config = self.config_pins.get((key[1], key[0], key[2]))
            approved = config if config is not None else (row.approved if row is not None else None)
            if first_sight and row is None and config in (None, digest):
                adds.append(PinRow(*key, approved=digest, approved_definition=canon))
                approved = digest
                if key[1] == "tool":
                    recorded_tools.append(Tool(upstream, key[2], item.get("description")))
            if digest == approved:
                if row is not None and row.pending is not None:
                    pending.append((key, None, None))  # the upstream went back to the approved definition
                continue
            if row is None or row.pending != digest:
                pending.append((key, digest, canon))
                if key[1] == "tool" and approved is None:
                    recorded_tools.append(Tool(upstream, key[2], item.get("description")))
            action = "hidden" if self.mode == "block" else "flagged"
            if (key, digest) not in self._reported:
                self._reported.add((key, digest))
                event = PinEvent("changed" if approved else "new", key[1], *key[::2], action=action,
                                 digest=digest, approved=approved)
                log.warning("pins: %s %s has %s definition %s (approved %s): %s until `stile pins approve %s`",
                            key[1], event.ref, "a changed" if approved else "an unapproved", digest[:19],
                            (approved or "none")[:19], action, event.ref)
                self.report(event)
            if self.mode == "block":
                dropped.add(key)
        if first_sight:
            adds.append(PinRow(upstream, SEEN, "", approved="seen"))
        existing = self._others(upstream, rows) if recorded_tools else []
        self._latest[upstream] = [Tool(upstream, k[2], v[2].get("description"))
                                  for k, v in seen.items.items() if k[1] == "tool"]
        if recorded_tools:
            await self._check_lookalikes(upstream, recorded_tools, existing)
        if writable:
            await self._write(adds, pending)
            self._rows = _merged(rows, adds, pending)
        self._snapshot[upstream] = _approvals(rows, upstream) | _approvals(adds, upstream)
        if not dropped:
            return inv
        keep = {kind: [v[2] for k, v in seen.items.items() if k[1] == kind and k not in dropped]
                for kind in INVENTORY_FIELD}
        return Inventory(keep["tool"], inv.resources, keep["template"], keep["prompt"], ok=True, error=inv.error)

    async def _write(self, adds: list[PinRow], pending: list[tuple[Key, str | None, str | None]]) -> None:
        try:
            async with asyncio.timeout(STORE_TIMEOUT):
                await self.store.add(adds)
                for key, digest, canon in pending:
                    await self.store.set_pending(*key, digest, canon)
        except (SQLAlchemyError, OSError, TimeoutError) as exc:
            log.error("pins: cannot write the pin store: %s", exc)

    def _others(self, upstream: str, rows: list[PinRow]) -> list[Tool]:
        """The tools of every other upstream: approved in the store, or offered now (concurrent discovery)."""
        existing = [Tool(r.upstream, r.name, _described(r)) for r in rows
                    if r.kind == "tool" and r.approved is not None and r.upstream != upstream]
        known = {(t.upstream, t.name) for t in existing}
        existing += [t for up, tools in self._latest.items() if up != upstream for t in tools
                     if (t.upstream, t.name) not in known]
        return existing

    async def _check_lookalikes(self, upstream: str, new: list[Tool], existing: list[Tool]) -> None:
        if len(new) * len(existing) > INLINE_COMPARISONS:  # thousands of tools: keep the event loop serving
            found = await asyncio.to_thread(lookalikes, new, existing)
        else:
            found = lookalikes(new, existing)
        hits = [h for h in found if self._first(h)]
        for hit in hits[:MAX_LOOKALIKE_REPORTS]:
            self._lookalike(hit)
        if len(hits) > MAX_LOOKALIKE_REPORTS:
            log.warning("pins: %d more lookalike tools on upstream %s not reported (run `stile check`)",
                        len(hits) - MAX_LOOKALIKE_REPORTS, upstream)

    def _first(self, hit: Lookalike) -> bool:
        pair = (f"{hit.new.upstream}.{hit.new.name}", f"{hit.existing.upstream}.{hit.existing.name}")
        if pair in self._lookalikes:
            return False
        self._lookalikes.add(pair)
        return True

    def _lookalike(self, hit: Lookalike) -> None:
        log.warning("pins: %s", hit.message())
        self.report(PinEvent("lookalike", "tool", hit.new.upstream, hit.new.name, action="flagged",
                             detail=f"{hit.message()}"))

    # --- approvals made elsewhere ------------------------------------------------------------------
    async def start(self) -> None:
        if self._poller is None:
            self._poller = asyncio.create_task(self._poll(), name="pins-poll")

    async def aclose(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
            self._poller = None
        await self.store.aclose()

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.pin_poll_seconds)
            await self.poll_once()

    async def poll_once(self) -> list[str]:
        """Re-read the pin table; re-discover each upstream whose approvals changed. Returns those upstreams."""
        try:
            async with asyncio.timeout(STORE_TIMEOUT):
                rows = await self.store.rows()
        except (SQLAlchemyError, OSError, TimeoutError) as exc:
            log.warning("pins: cannot read the pin store: %s", exc)
            return []
        self._rows = rows
        changed = [up for up, before in self._snapshot.items() if _approvals(rows, up) != before]
        for up in changed:
            self._snapshot[up] = _approvals(rows, up)
            log.info("pins: approvals for upstream %s changed; re-discovering it", up)
            if self.on_change is not None:
                await self.on_change(up)
        return changed
