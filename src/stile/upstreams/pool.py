"""One upstream served by several endpoints (`endpoints: [url, ...]`, or stdio `replicas: N`).

`PooledUpstream` implements the `Upstream` seam over N ordinary member upstreams (`HttpUpstream`,
`SseUpstream` or `StdioUpstream`, one per endpoint, each with its own upstream session), built from a
copy of the config with that endpoint's URL. Per call it picks a member (`balance`: round robin,
least in flight, or `session`: rendezvous hashing on `CallOptions.affinity`, so one client stays on
one endpoint while it is available), skipping endpoints that are ejected (passive outlier detection)
or whose circuit breaker is open (`upstreams/breaker.py`).

Retries go to another endpoint, with exponential backoff and full jitter, within a retry budget, and
only when repeating the call is harmless: safe methods (lists, reads, prompts/get, completion, ping),
tools the upstream annotates `readOnlyHint` / `idempotentHint` (learned from the `tools/list` answers
that pass through) or that config lists in `retry_tools`; any other call is retried only when the
failure is known to have happened before the request left (the endpoint was not ready, or the
connection was refused / timed out while connecting).

Discovery (`start`, `era`, `capabilities`, `instructions`, lists) uses the first available member;
notifications of every member reach `on_notification`. Only transport failures (`UpstreamUnavailable`,
`UpstreamTimeout`) count against an endpoint; JSON-RPC errors are answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import hashlib
import itertools
import logging
import random
import time
from collections.abc import Callable, Sequence
from typing import Any

from stile.config.model import UpstreamConfig
from stile.tasks import spawn
from stile.upstreams.base import (
    DEFAULT_MAX_RESPONSE,
    DEFAULT_OPTIONS,
    CallOptions,
    Era,
    OnNotification,
    Upstream,
    ignore_notification,
)
from stile.upstreams.breaker import Breaker, BreakerState, Clock, Ejection, RetryBudget, max_ejected
from stile.upstreams.h1 import H1Error
from stile.wire.errors import UpstreamError, UpstreamTimeout, UpstreamUnavailable
from stile.wire.jsonrpc import Message

log = logging.getLogger("stile.upstream.pool")

SAFE_METHODS = frozenset({
    "tools/list", "prompts/list", "resources/list", "resources/templates/list", "resources/read",
    "prompts/get", "completion/complete", "ping", "server/discover",
})
DISCOVERY_METHODS = frozenset({"tools/list", "prompts/list", "resources/list", "resources/templates/list",
                               "server/discover"})
BACKOFF_BASE = 0.02  # seconds before the first retry (full jitter: uniform in [0, base * 2^(n-1)])
BACKOFF_CAP = 0.5
MemberFactory = Callable[[str, UpstreamConfig, int], Upstream]


class Endpoint:
    """One member upstream and what the pool knows about its health."""

    def __init__(self, index: int, label: str, member: Upstream, cfg: UpstreamConfig, clock: Clock,
                 upstream: str) -> None:
        b, e = cfg.breaker, cfg.ejection
        self.index = index
        self.label = label
        self.stdio = cfg.kind == "stdio"
        self.member = member
        self.in_flight = 0
        self.checks_up = True  # the active health check's verdict (always True when checks are off)
        self.check_streak = 0  # passed (> 0) or failed (< 0) checks in a row
        self.breaker = Breaker(clock, failures=b.failures, failure_rate=b.failure_rate, window=b.window,
                               open_seconds=b.open_seconds, trial_calls=b.trial_calls)
        self.ejection = Ejection(clock, consecutive=e.consecutive_failures, base_seconds=e.base_seconds,
                                 max_seconds=e.max_seconds)

        def changed(state: BreakerState) -> None:
            log.warning("upstream %s endpoint %s: breaker %s", upstream, label, state)

        self.breaker.on_change = changed

    def selectable(self) -> bool:
        return self.checks_up and not self.ejection.ejected and self.breaker.available()

    def state(self) -> str:
        if not self.checks_up:
            return "down"
        if self.ejection.ejected:
            return "ejected"
        breaker = self.breaker.state
        if breaker != "closed":
            return breaker
        return "healthy" if self.member.healthy else "down"


class PooledUpstream:
    def __init__(self, name: str, cfg: UpstreamConfig, members: Sequence[tuple[str, Upstream]],
                 clock: Clock = time.monotonic, rand: Callable[[], float] = random.random) -> None:
        if not members:
            raise ValueError("a pooled upstream needs at least one endpoint")
        self.name = name
        self.cfg = cfg
        self._clock = clock
        self._rand = rand
        self.endpoints = [Endpoint(i, label, m, cfg, clock, name) for i, (label, m) in enumerate(members)]
        self.target = ", ".join(label for label, _ in members)  # every endpoint, for operators' messages
        self._max_ejected = max_ejected(len(members), cfg.ejection.max_ejected_percent)
        self._budget = RetryBudget(clock, ratio=cfg.retry_budget, min_per_second=cfg.retry_min_per_second)
        self._rr = itertools.count()
        self._safe_tools: set[str] = set()
        self._checker: asyncio.Task[None] | None = None
        self.era: Era | None = None
        self.server_info: dict[str, Any] = {}
        self.capabilities: dict[str, Any] = {}
        self.instructions: str | None = None
        self.on_notification: OnNotification = ignore_notification
        for ep in self.endpoints:
            ep.member.on_notification = self._relay

    def _relay(self, name: str, msg: Message) -> None:
        self.on_notification(self.name, msg)

    # --- the Upstream seam -----------------------------------------------------------------
    @property
    def healthy(self) -> bool:
        return any(ep.selectable() and ep.member.healthy for ep in self.endpoints)

    @property
    def last_error(self) -> str | None:
        if self.healthy:
            return None
        errors = [ep.member.last_error for ep in self.endpoints if ep.member.last_error]
        return errors[0] if errors else f"no endpoint of {len(self.endpoints)} is available"

    async def start(self) -> None:
        """Start every member; succeed when at least one is up (the others keep being tried per call)."""
        results = await asyncio.gather(*(ep.member.start() for ep in self.endpoints), return_exceptions=True)
        first: UpstreamError | None = None
        for ep, res in zip(self.endpoints, results, strict=True):
            if isinstance(res, UpstreamError):
                log.warning("upstream %s endpoint %s did not start: %s", self.name, ep.label, res.message)
                self._failed(ep, res)
                first = first or res
            elif isinstance(res, BaseException):
                raise res
        if self.cfg.health_check.interval > 0 and self._checker is None:
            self._checker = spawn(self._check_forever(), name=f"health-{self.name}")
        if not self._adopt() and first is not None:
            raise first

    def _adopt(self) -> bool:
        """Take the negotiated surface from the first member that has one."""
        for ep in self.endpoints:
            m = ep.member
            if m.healthy and m.era is not None:
                self.era, self.server_info = m.era, m.server_info
                self.capabilities, self.instructions = m.capabilities, m.instructions
                return True
        return False

    async def request(self, method: str, params: dict[str, Any], opts: CallOptions = DEFAULT_OPTIONS) -> Message:
        """One call; `timeout` bounds every attempt together (a retry gets what is left of it)."""
        safe = self._is_safe(method, params)
        self._budget.request()
        ep = self._pick(method, opts.affinity, set())
        if ep is None:
            raise self._all_open()
        deadline = self._clock() + self.cfg.timeout
        tried: set[int] = set()
        retries = 0
        while True:
            tried.add(ep.index)
            try:
                if retries:
                    async with asyncio.timeout(max(0.0, deadline - self._clock())):
                        reply = await self._attempt(ep, method, params, opts)
                else:
                    reply = await self._attempt(ep, method, params, opts)
            except TimeoutError:
                raise UpstreamTimeout(self.name, f"no answer to {method} within {self.cfg.timeout}s "
                                                 f"({retries + 1} attempts)") from None
            except _Failed as failed:
                nxt = None
                delay = self._rand() * min(BACKOFF_CAP, BACKOFF_BASE * 2 ** retries)
                if (safe or failed.before_send) and retries < self.cfg.retries and self._clock() + delay < deadline:
                    nxt = self._pick(method, opts.affinity, tried)
                if nxt is None:
                    raise failed.error from None
                if not self._budget.try_retry():
                    log.info("upstream %s: retry budget spent; not retrying %s", self.name, method)
                    raise failed.error from None
                retries += 1
                await asyncio.sleep(delay)
                ep = nxt
                continue
            if method == "tools/list":
                self._learn_tools(reply)
            if self.era is None or method in DISCOVERY_METHODS:
                self._adopt()
            return reply

    async def notify(self, method: str, params: dict[str, Any]) -> None:
        await asyncio.gather(*(ep.member.notify(method, params) for ep in self.endpoints if ep.member.healthy))

    async def aclose(self) -> None:
        if self._checker is not None:
            self._checker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._checker
        for ep in self.endpoints:
            with contextlib.suppress(UpstreamError):
                await ep.member.aclose()

    # --- health ------------------------------------------------------------------------------
    def endpoint_status(self) -> list[dict[str, Any]]:
        """Per endpoint: url (or `stdio#N`), state (healthy / down / ejected / open / half_open), counters."""
        now, wall = self._clock(), time.time()
        out = []
        for ep in self.endpoints:
            until = ep.ejection.until
            out.append({"url": ep.label, "state": ep.state(), "breaker": ep.breaker.state,
                        "consecutive_failures": ep.ejection.consecutive_failures, "in_flight": ep.in_flight,
                        "ejected_until": wall + (until - now) if until > now else None,
                        "last_error": ep.member.last_error})
        return out

    async def check_once(self) -> None:
        """One round of active checks: a `ping` to every endpoint, concurrently, within `timeout`."""
        await asyncio.gather(*(self._check(ep) for ep in self.endpoints))

    async def _check(self, ep: Endpoint) -> None:
        hc = self.cfg.health_check
        try:
            async with asyncio.timeout(hc.timeout):
                await ep.member.request("ping", {})
            ok = True
        except (UpstreamError, TimeoutError):
            ok = False
        ep.check_streak = max(1, ep.check_streak + 1) if ok else min(-1, ep.check_streak - 1)
        if ep.checks_up and ep.check_streak <= -hc.unhealthy:
            ep.checks_up = False
            log.warning("upstream %s endpoint %s: down (%d failed health checks)", self.name, ep.label, hc.unhealthy)
        elif not ep.checks_up and ep.check_streak >= hc.healthy:
            ep.checks_up = True
            log.warning("upstream %s endpoint %s: up again (%d passed health checks)", self.name, ep.label,
                        hc.healthy)

    async def _check_forever(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.health_check.interval)
            await self.check_once()

    # --- one attempt -----------------------------------------------------------------------
    async def _attempt(self, ep: Endpoint, method: str, params: dict[str, Any], opts: CallOptions) -> Message:
        if not ep.breaker.acquire():  # raced with another call for the last trial slot
            raise _Failed(UpstreamUnavailable(self.name, f"endpoint {ep.label} is not admitting calls"), True)
        ep.in_flight += 1
        outcome = False
        try:
            try:
                if ep.stdio and not ep.member.healthy:
                    raise UpstreamUnavailable(self.name, f"process {ep.label} is not running")
                await ep.member.start()  # a no-op once ready; a failure here means nothing was sent
            except (UpstreamUnavailable, UpstreamTimeout) as exc:
                outcome = True
                self._failed(ep, exc)
                raise _Failed(exc, True) from None
            try:
                reply = await ep.member.request(method, params, opts)
            except (UpstreamUnavailable, UpstreamTimeout) as exc:
                outcome = True
                self._failed(ep, exc)
                raise _Failed(exc, _never_sent(exc)) from None
            outcome = True
            ep.breaker.success()
            ep.ejection.success()
            return reply
        finally:
            ep.in_flight -= 1
            if not outcome:
                ep.breaker.release()

    def _failed(self, ep: Endpoint, exc: UpstreamError) -> None:
        log.info("upstream %s endpoint %s failed (%d in a row): %s", self.name, ep.label,
                 ep.breaker.consecutive + 1, exc.message)
        ep.breaker.failure()
        ejected = sum(1 for other in self.endpoints if other.ejection.ejected)
        if ep.ejection.failure(may_eject=ejected < self._max_ejected):
            log.warning("upstream %s endpoint %s ejected for %.1fs (ejection %d in a row)", self.name, ep.label,
                        ep.ejection.until - self._clock(), ep.ejection.times)

    # --- choosing an endpoint --------------------------------------------------------------
    def _pick(self, method: str, affinity: str | None, tried: set[int]) -> Endpoint | None:
        candidates = [ep for ep in self.endpoints if ep.index not in tried and ep.selectable()]
        if not candidates:
            return None
        if len(candidates) == 1 or method in DISCOVERY_METHODS:
            return candidates[0]
        balance = self.cfg.balance
        if balance == "session" and affinity is not None:
            return max(candidates, key=lambda ep: _score(affinity, ep.label))
        if balance == "least_in_flight":
            low = min(ep.in_flight for ep in candidates)
            candidates = [ep for ep in candidates if ep.in_flight == low]
        return candidates[next(self._rr) % len(candidates)]

    def _all_open(self) -> UpstreamUnavailable:
        """The fast answer when no endpoint admits calls: names the upstream and when to come back."""
        waits = [max(ep.breaker.retry_after(), ep.ejection.until - self._clock(),
                     0.0 if ep.checks_up else self.cfg.health_check.interval) for ep in self.endpoints]
        retry_ms = max(1, int(min(waits) * 1000))
        err = UpstreamUnavailable(self.name, f"no endpoint is available (circuit open); retry in {retry_ms} ms")
        err.data = {"upstream": self.name, "retry_after_ms": retry_ms}
        return err

    # --- which calls may be repeated ---------------------------------------------------------
    def _is_safe(self, method: str, params: dict[str, Any]) -> bool:
        if method in SAFE_METHODS:
            return True
        if method != "tools/call":
            return False
        name = params.get("name")
        if not isinstance(name, str):
            return False
        return name in self._safe_tools or any(fnmatch.fnmatchcase(name, g) for g in self.cfg.retry_tools)

    def _learn_tools(self, reply: Message) -> None:
        result = reply.get("result")
        tools = result.get("tools") if isinstance(result, dict) else None
        for tool in tools if isinstance(tools, list) else ():
            if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
                continue
            hints = tool.get("annotations")
            safe = isinstance(hints, dict) and (hints.get("readOnlyHint") is True
                                                or hints.get("idempotentHint") is True)
            (self._safe_tools.add if safe else self._safe_tools.discard)(tool["name"])


class _Failed(Exception):
    def __init__(self, error: UpstreamError, before_send: bool) -> None:
        super().__init__(error.message)
        self.error = error
        self.before_send = before_send


def _never_sent(exc: BaseException) -> bool:
    """True when the failure is known to precede sending: an HTTP connect that failed on the first try."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return False
        if isinstance(seen, H1Error):
            return not seen.maybe_sent
        seen = seen.__cause__ or seen.__context__
    return False


def _score(key: str, label: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{key}\x00{label}".encode(), digest_size=8).digest(), "big")


def build_pool(name: str, cfg: UpstreamConfig, make: MemberFactory,
               max_response: int = DEFAULT_MAX_RESPONSE) -> PooledUpstream:
    """Members from a pooled config: one per `endpoints` URL, or `replicas` copies of a stdio command."""
    members: list[tuple[str, Upstream]] = []
    if cfg.endpoints is not None:
        for url in cfg.endpoints:
            one = cfg.model_copy(update={"url": url, "endpoints": None})
            members.append((url, make(name, one, max_response)))
    else:
        for i in range(cfg.replicas):
            members.append((f"stdio#{i}", make(name, cfg.model_copy(update={"replicas": 1}), max_response)))
    return PooledUpstream(name, cfg, members)
