"""Active upstream health checks: they drive /readyz and run discovery (and its retries) in the background.

One task per upstream, started by `Gateway.start` (so the server listens before any upstream answers):

- an upstream not discovered yet (or whose last discovery failed) is re-discovered (`Gateway.refresh`),
  retried with backoff from 0.5 s doubling up to its interval, so a dead upstream that comes up is ready
  within one interval;
- a discovered upstream gets a cheap `ping` on its shared session (stdio process, legacy session, modern
  stateless POST) every `health.interval` seconds (per upstream: `health_interval`), bounded by
  `health.timeout`. Any JSON-RPC answer counts as alive; a failure marks it not ready at once (its last
  inventory stays listed, calls fail naming the cause), it is then pinged with the same backoff, and the
  first successful ping re-discovers it (its tools may have changed).

Client traffic is never needed to flip readiness, and no client request waits on a retry: `kick` only
wakes an upstream's task early. Each upstream's status carries a reason for operators (URL/command and
the cause, see `upstreams/causes.py`); /readyz shows it only to callers allowed to see details.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from stile.config.model import GatewayConfig
from stile.core.catalog import Inventory
from stile.tasks import spawn
from stile.upstreams.base import Upstream
from stile.upstreams.causes import detail_of
from stile.wire.errors import StileError

log = logging.getLogger("stile.health")
FIRST_RETRY = 0.5


@dataclass
class UpstreamHealth:
    ready: bool = False
    reason: str | None = None  # for operators: target and cause; None when ready or not checked yet
    checked_at: float = 0.0  # time.monotonic() of the last check
    checks: int = 0


class HealthChecker:
    def __init__(self, cfg: GatewayConfig, upstreams: dict[str, Upstream], inventories: Callable[[str], Inventory],
                 refresh: Callable[[str], Awaitable[Inventory]]) -> None:
        self.cfg = cfg
        self.upstreams = upstreams
        self._inventory = inventories
        self._refresh = refresh
        self.status: dict[str, UpstreamHealth] = {n: UpstreamHealth() for n in upstreams}
        self._first: dict[str, asyncio.Event] = {}
        self._wake: dict[str, asyncio.Event] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self.started = False

    def interval(self, name: str) -> float:
        return self.cfg.upstreams[name].health_interval or self.cfg.health.interval

    def start(self) -> None:
        if self.started:
            return
        self.started = True
        for name in self.upstreams:
            self._first[name] = asyncio.Event()
            self._wake[name] = asyncio.Event()
            self._tasks.append(spawn(self._loop(name), name=f"health-{name}"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    def discovered(self, name: str) -> bool:
        """Whether the first discovery attempt of `name` has ended (always, when checks are not running)."""
        first = self._first.get(name)
        return first is None or first.is_set()

    async def wait_first(self, names: Iterable[str], timeout: float | None) -> None:
        """Wait (at most `timeout` seconds) until the first discovery attempt of each of `names` has ended."""
        waits = [self._first[n].wait() for n in names if not self.discovered(n)]
        if waits:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await asyncio.gather(*waits)

    def kick(self, name: str) -> None:
        """Check `name` now instead of at its next turn (never waits)."""
        wake = self._wake.get(name)
        if wake is not None:
            wake.set()

    def ready(self, name: str) -> bool:
        up = self.upstreams[name]
        inv = self._inventory(name)
        if not self.started:  # a gateway not started: what the last discovery and the transport say
            return inv.ok and up.healthy
        return self.status[name].ready and inv.ok and up.healthy

    def reason(self, name: str) -> str | None:
        if self.ready(name):
            return None
        if self.started:  # None until the first check has ended
            return self.status[name].reason
        return self.upstreams[name].last_error or self._inventory(name).error or "not ready"

    def report(self, details: bool) -> tuple[bool, dict[str, dict[str, Any]]]:
        """(all ready, per-upstream status) for /readyz; `details` adds the reason of an upstream not ready."""
        out: dict[str, dict[str, Any]] = {}
        for name, up in self.upstreams.items():
            entry: dict[str, Any] = {"ready": self.ready(name), "era": up.era}
            if details:
                entry["error"] = self.reason(name)
            endpoints = getattr(up, "endpoint_status", None)  # a pooled upstream (upstreams/pool.py)
            if callable(endpoints):  # states for everyone; URLs and errors only with details
                entry["endpoints"] = [{"state": e["state"], "breaker": e["breaker"],
                                       **({"url": e["url"], "error": e["last_error"]} if details else {})}
                                      for e in endpoints()]
            out[name] = entry
        return all(e["ready"] for e in out.values()), out

    async def _loop(self, name: str) -> None:
        retry = min(FIRST_RETRY, self.interval(name))
        while True:
            ok = await self._check(name)
            self._first[name].set()
            if ok:
                delay, retry = self.interval(name), min(FIRST_RETRY, self.interval(name))
            else:
                delay, retry = retry, min(retry * 2, self.interval(name))
            wake = self._wake[name]
            wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await wake.wait()

    async def _check(self, name: str) -> bool:
        st = self.status[name]
        was_ready = st.ready
        if not self._inventory(name).ok:
            inv = await self._refresh(name)  # discovery: the first time, and until it succeeds
            ok, reason = inv.ok, inv.error
        else:
            ok, reason = await self._ping(name)
            if ok and not was_ready and st.checks:
                inv = await self._refresh(name)  # back after a failure: its surface may have changed
                ok, reason = inv.ok, inv.error
        st.ready, st.reason, st.checked_at = ok, (None if ok else reason), time.monotonic()
        st.checks += 1
        if ok != was_ready and st.checks > 1:
            if ok:
                log.info("upstream %s: ready again", name)
            else:
                log.warning("upstream %s: not ready: %s", name, reason)
        return ok

    async def _ping(self, name: str) -> tuple[bool, str | None]:
        up = self.upstreams[name]
        timeout = self.cfg.health.timeout
        try:
            async with asyncio.timeout(timeout):
                await up.request("ping", {})  # any JSON-RPC answer, even an error, means it is alive
        except TimeoutError:
            return False, f"{up.target}: no answer to ping within {timeout:g}s"
        except StileError as exc:
            return False, detail_of(exc, up.target)
        return True, None
