"""What one replica shares with the others over the bus (`stile.bus`), so a client never notices which
replica a request lands on.

- `list_changed` heard from an upstream: the first replica to claim it (one claim per upstream and
  method per CHANGED_WINDOW seconds) re-discovers, tells its own listeners and broadcasts `lc`; every
  other replica re-discovers and tells its listeners. Replicas that heard the same notice from their own
  upstream sessions lose the claim and only re-discover, so each listener gets one notification.
- `resources/updated` from an upstream (sent to whichever replica subscribed upstream): delivered here
  and broadcast (`ru`); every replica filters by the subscribed URIs of its streams.
- A legacy session's subscribed URIs: kept in a shared set (`uris.<nonce>`, expiring with the session)
  and broadcast on change (`uri`), so a GET stream on replica A sees subscriptions made through B.
- DELETE of a legacy session: broadcast (`revoked`) so every replica refuses it at once, not only after
  its revocation cache (`auth.key_cache_seconds`) expires; the state store stays the record.
- The active-sessions gauge: every replica reports the sessions it saw every REPORT_SECONDS to one
  expiring member set; `active_sessions()` answers the cluster-wide count.

With the in-process bus none of this runs (`shared` is False): the single-process paths are unchanged.
Bus down: each of these falls back to this replica alone (logged, `stile_bus_up` 0), never waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

import orjson

from stile.bus import Bus, BusUnavailable
from stile.bus.rpc import Rpc
from stile.core.hub import LIST_CHANGED
from stile.tasks import spawn

if TYPE_CHECKING:
    from stile.core.gateway import Gateway

log = logging.getLogger("stile.cluster")
CHANGED_WINDOW = 1.0
REPORT_SECONDS = 2.0
MAX_PAYLOAD = 64 * 1024  # bytes of a resources/updated notification worth broadcasting
_CHANGED = frozenset(LIST_CHANGED)


class Cluster:
    def __init__(self, gw: Gateway, bus: Bus, rpc: Rpc) -> None:
        self.gw = gw
        self.bus = bus
        self.rpc = rpc
        self.shared = bus.shared
        self._active: int | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        if self.shared:
            rpc.on_cast("lc", self._on_list_changed)
            rpc.on_cast("ru", self._on_resource_updated)
            rpc.on_cast("uri", self._on_uri)
            rpc.on_cast("revoked", self._on_revoked)
            gw.hub.on_uri_change = self.uri_changed
            gw.sealer.track_fresh = True

    def status(self) -> dict[str, Any]:
        return {"kind": self.bus.kind, "replica": self.bus.replica, "up": self.bus.up}

    async def start(self) -> None:
        await self.bus.start()
        if self.shared:
            self._task = spawn(self._report_loop(), name="cluster-report")

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=2.0)  # bounded: a cancellation lost in a race ends the loop
        await self.bus.aclose()

    # --- list_changed / resources/updated -------------------------------------------------------
    async def list_changed(self, upstream: str, method: str) -> None:
        """`upstream` told this replica that a list changed."""
        spread = self.shared
        won = True
        if spread:
            try:
                won = await self.bus.claim(f"lc.{upstream}.{method}", CHANGED_WINDOW)
            except BusUnavailable as exc:
                log.warning("bus down: %s from %s reaches this replica's listeners only (%s)", method, upstream, exc)
                spread = False
        await self.gw.refresh(upstream)
        if not won:
            return  # another replica heard the same notice first: its broadcast reaches this one's listeners
        self.gw.deliver_list_changed(upstream, method)
        if spread:
            with contextlib.suppress(BusUnavailable):
                await self.rpc.cast(None, "lc", {"up": upstream, "m": method})

    def _on_list_changed(self, payload: dict[str, Any], sender: str) -> None:
        upstream, method = payload.get("up"), payload.get("m")
        if sender != self.bus.replica and upstream in self.gw.upstreams and method in _CHANGED:
            spawn(self._refresh_and_deliver(str(upstream), str(method)), name=f"refresh-{upstream}")

    async def _refresh_and_deliver(self, upstream: str, method: str) -> None:
        await self.gw.refresh(upstream)
        self.gw.deliver_list_changed(upstream, method)

    def resource_updated(self, upstream: str, msg: dict[str, Any]) -> None:
        """After delivering here: tell the other replicas' streams."""
        if self.shared:
            if len(orjson.dumps(msg)) > MAX_PAYLOAD:
                log.warning("resources/updated from %s over %d bytes: not shared with other replicas", upstream,
                            MAX_PAYLOAD)
                return
            spawn(self._spread_update(upstream, msg), name="cluster-updated")

    async def _spread_update(self, upstream: str, msg: dict[str, Any]) -> None:
        try:
            await self.rpc.cast(None, "ru", {"up": upstream, "msg": msg})
        except BusUnavailable as exc:
            log.warning("bus down: resources/updated from %s reaches this replica's streams only (%s)", upstream, exc)

    def _on_resource_updated(self, payload: dict[str, Any], sender: str) -> None:
        upstream, msg = payload.get("up"), payload.get("msg")
        if sender != self.bus.replica and upstream in self.gw.upstreams and isinstance(msg, dict):
            self.gw.deliver_resource_updated(str(upstream), msg)

    # --- legacy sessions: subscribed URIs, DELETE, the active gauge -------------------------------
    async def uri_changed(self, nonce: str, uri: str, present: bool) -> None:
        try:
            await self.bus.set_update(f"uris.{nonce}", uri, present, self.gw.sessions.lifetime)
            await self.rpc.cast(None, "uri", {"n": nonce, "u": uri, "a": present})
        except BusUnavailable as exc:
            log.warning("bus down: a resource subscription is known to this replica only (%s)", exc)

    def _on_uri(self, payload: dict[str, Any], sender: str) -> None:
        nonce, uri, present = payload.get("n"), payload.get("u"), payload.get("a")
        if sender != self.bus.replica and isinstance(nonce, str) and isinstance(uri, str):
            self.gw.hub.apply_uri_change(nonce, uri, bool(present))

    async def load_session_uris(self, nonce: str) -> None:
        """Before a GET stream: the URIs this session subscribed to through any replica."""
        if not self.shared:
            return
        try:
            members = await self.bus.set_members(f"uris.{nonce}")
        except BusUnavailable as exc:
            log.warning("bus down: a GET stream sees the subscriptions made on this replica only (%s)", exc)
            return
        self.gw.hub.session_uris(nonce).update(members)

    async def session_closed(self, nonce: str, expires: float) -> None:
        if not self.shared:
            return
        try:
            await self.rpc.cast(None, "revoked", {"n": nonce, "e": expires})
        except BusUnavailable as exc:  # the state store has it: others refuse it once their cache expires
            log.warning("bus down: other replicas learn of a DELETE within auth.key_cache_seconds (%s)", exc)

    def _on_revoked(self, payload: dict[str, Any], sender: str) -> None:
        nonce, expires = payload.get("n"), payload.get("e")
        if sender != self.bus.replica and isinstance(nonce, str) and isinstance(expires, (int, float)):
            self.gw.sessions.remember_revoked(nonce, float(expires))
            self.gw.hub.drop_session(nonce)
            self.gw.sealer.forget(nonce)

    def active_sessions(self) -> int:
        """Legacy sessions used within the active window on any replica (this one's alone when unknown)."""
        if self.shared and self._active is not None and self.bus.up:
            return self._active
        return self.gw.sealer.active_count()

    async def _report_loop(self) -> None:
        sealer = self.gw.sealer
        while not self._stopping:
            fresh, gone = sealer.fresh, sealer.gone
            sealer.fresh, sealer.gone = set(), set()
            try:
                self._active = await self.bus.mark("sessions", sorted(fresh), sorted(gone), sealer.ACTIVE_WINDOW)
            except BusUnavailable:
                self._active = None
                sealer.fresh |= fresh  # reported when the bus is back
                sealer.gone |= gone
            await asyncio.sleep(REPORT_SECONDS)
