"""The running gateway: upstreams, their inventories, the virtual-server views and the hub.

Discovery runs in the background from start (one health-check task per upstream, `core/health.py`:
start never waits on an upstream, so the server listens at once) and again for one upstream whenever
it says `list_changed`; views are rebuilt from inventories and swapped atomically. A failed upstream is
retried by its health task with backoff; a client listing only wakes that task (at most every
RETRY_AFTER seconds), never waits on it. A client request in the first `health.startup_wait` seconds
after start waits (until then at most) for the upstreams' first discovery attempts to end, so a client
connecting at once sees every healthy upstream; later requests answer from what is known.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from stile.bus import Bus, open_bus
from stile.bus.rpc import Rpc
from stile.config.model import GatewayConfig
from stile.core.catalog import Inventory, View, build_view
from stile.core.cluster import Cluster
from stile.core.context import CallContext, CallNext, Reply
from stile.core.health import HealthChecker
from stile.core.hub import LIST_CHANGED, Hub
from stile.core.mrtr import InputBridge
from stile.core.router import NO_SPANS, Router, UpstreamSpans
from stile.core.session_guard import SessionGuard
from stile.core.sessions import SessionSealer, resolve_key
from stile.stores.revocations import open_revocation_store
from stile.tasks import spawn
from stile.upstreams.base import Upstream
from stile.upstreams.causes import detail_of
from stile.upstreams.credentials import NO_CREDENTIALS, Credentials
from stile.upstreams.factory import make_upstream
from stile.wire import jsonrpc
from stile.wire.errors import MethodNotFound, StileError
from stile.wire.jsonrpc import Message

log = logging.getLogger("stile.gateway")
RETRY_AFTER = 2.0
MAX_PAGES = 100
_CAP_FOR = {"tools/list": "tools", "resources/list": "resources", "resources/templates/list": "resources",
            "prompts/list": "prompts"}
_LIST_KEY = {"tools/list": "tools", "resources/list": "resources", "resources/templates/list": "resourceTemplates",
             "prompts/list": "prompts"}
# applied to every fetched inventory before views see it (pinning: `stile.governance.pinning`)
InventoryFilter = Callable[[str, Inventory], Awaitable[Inventory]]
_CHANGED = frozenset(LIST_CHANGED)


class Gateway:
    """Upstreams, their inventories, the views, and one policy chain per virtual server.

    It knows nothing of which policies exist: the composition root (`stile.assembly`) builds each
    virtual server's chain around `router.handle` and installs it with `install_chains`.
    """

    def __init__(self, cfg: GatewayConfig, *, spans: UpstreamSpans = NO_SPANS, state_url: str | None = None,
                 inventory_filter: InventoryFilter | None = None,
                 credentials: Credentials = NO_CREDENTIALS, bus: Bus | None = None) -> None:
        self.cfg = cfg
        # how other replicas/workers reach state held here (STILE_BUS_URL > `redis:` > in-process)
        self.bus = bus if bus is not None else open_bus(cfg.redis, cfg.redis_prefix)
        self.rpc = Rpc(self.bus)
        self.inventory_filter = inventory_filter
        self.upstreams: dict[str, Upstream] = {
            n: make_upstream(n, c, cfg.limits.max_upstream_response_bytes, credentials)
            for n, c in cfg.upstreams.items()}
        self.inventories: dict[str, Inventory] = {n: Inventory() for n in cfg.upstreams}
        self.views: dict[str, View] = {}
        self.hub = Hub()
        key, self.key_source = resolve_key(cfg.session_key)
        self.sealer = SessionSealer(key)
        self.sessions = SessionGuard(self.sealer, open_revocation_store(state_url or cfg.state),
                                     lifetime=cfg.limits.session_lifetime, cache_seconds=cfg.auth.key_cache_seconds)
        self.inputs = InputBridge(key, self.rpc, resume_timeout=max(
            (u.timeout for u in cfg.upstreams.values()), default=60.0) + 5.0)
        self.router = Router(cfg, self.upstreams, self, self.inputs, self.hub, spans)
        self.chains: dict[str, CallNext] = {}
        # told of every upstream notification (upstream, method, message) first, e.g. the response cache
        self.upstream_listeners: list[Callable[[str, str, Message], None]] = []
        self._last_try: dict[str, float] = {}
        self._refresh_locks: dict[str, asyncio.Lock] = {n: asyncio.Lock() for n in cfg.upstreams}
        self.health = HealthChecker(cfg, self.upstreams, lambda n: self.inventories[n], self.refresh)
        self._warming = False  # just started: requests wait (bounded) for the first discovery attempts
        self._warm_until = 0.0
        self._problems_task: asyncio.Task[None] | None = None
        self._rebuild_views()
        self.cluster = Cluster(self, self.bus, self.rpc)

    def install_chains(self, chains: dict[str, CallNext]) -> None:
        self.chains = dict(chains)

    async def handle(self, ctx: CallContext) -> Reply:
        """The only way a client message reaches the router: through its virtual server's chain."""
        if self._warming:
            await self._warm_up()
        chain = self.chains.get(ctx.virtual_server)
        if chain is None:
            raise MethodNotFound(f"unknown virtual server {ctx.virtual_server!r}")
        return await chain(ctx)

    def instructions(self, name: str) -> str | None:
        """A virtual server's instructions: its own, else its single upstream's."""
        view = self.views.get(name)
        text = self.cfg.virtual_servers[name].instructions if name in self.cfg.virtual_servers else None
        if text is None and view is not None and len(view.upstreams) == 1:
            text = self.upstreams[view.upstreams[0]].instructions
        return text

    async def start(self) -> None:
        """Start discovery and health checks in the background; returns at once (see `wait_discovered`)."""
        await self.cluster.start()
        for name, up in self.upstreams.items():
            up.on_notification = self._notification_handler(name)
        self.health.start()
        self._warm_until = time.monotonic() + self.cfg.health.startup_wait
        self._warming = True
        self._problems_task = spawn(self._log_problems(), name="view-problems")

    async def _warm_up(self) -> None:
        """Just after start: wait until every first discovery attempt has ended or `startup_wait` is over."""
        remaining = self._warm_until - time.monotonic()
        if remaining > 0:
            await self.health.wait_first(self.upstreams, remaining)
        self._warming = False

    async def wait_discovered(self, timeout: float | None = None) -> None:
        """Wait until every upstream's first discovery attempt has ended (succeeded or failed)."""
        await self.health.wait_first(self.upstreams, timeout)

    async def _log_problems(self) -> None:
        await self.wait_discovered()
        for view in self.views.values():
            for problem in view.problems:
                log.warning("virtual server %s: %s", view.name, problem)

    async def stop(self) -> None:
        if self._problems_task is not None:
            self._problems_task.cancel()
        await self.health.stop()
        await asyncio.gather(*(up.aclose() for up in self.upstreams.values()), return_exceptions=True)
        await self.sessions.aclose()
        await self.cluster.stop()

    def view(self, name: str) -> View | None:
        return self.views.get(name)

    def _rebuild_views(self) -> None:
        self.views = {n: build_view(n, vs, self.cfg, self.inventories) for n, vs in self.cfg.virtual_servers.items()}

    async def refresh(self, name: str) -> Inventory:
        """(Re)discover one upstream: connect if needed, then fetch every list it offers."""
        async with self._refresh_locks[name]:
            self._last_try[name] = time.monotonic()
            up = self.upstreams[name]
            try:
                await up.start()
                lists: dict[str, list[dict[str, Any]]] = {}
                for method in _LIST_KEY:
                    lists[method] = await self._fetch_all(up, method) if _CAP_FOR[method] in up.capabilities else []
                inv = Inventory(lists["tools/list"], lists["resources/list"], lists["resources/templates/list"],
                                lists["prompts/list"], ok=True)
            except StileError as exc:
                why = detail_of(exc, up.target)
                repeated = why == self.inventories[name].error  # background retries: say it once
                log.log(logging.DEBUG if repeated else logging.WARNING, "upstream %s: discovery failed: %s", name, why)
                inv = Inventory(ok=False, error=why)
            if self.inventory_filter is not None and inv.ok:
                inv = await self.inventory_filter(name, inv)
            self.inventories[name] = inv
            self._rebuild_views()
            return inv

    async def _fetch_all(self, up: Upstream, method: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        cursor: str | None = None
        for _ in range(MAX_PAGES):
            params: dict[str, Any] = {} if cursor is None else {"cursor": cursor}
            msg = await up.request(method, params)
            res = msg.get("result")
            if not isinstance(res, dict):
                err = msg.get("error") or {}
                if err.get("code") == -32601:
                    return items
                raise StileError(f"{method} failed: {err.get('message', 'no result')}")
            page = res.get(_LIST_KEY[method])
            if isinstance(page, list):
                items.extend(i for i in page if isinstance(i, dict))
            nxt = res.get("nextCursor")
            if not isinstance(nxt, str) or nxt == cursor:
                return items
            cursor = nxt
        log.warning("upstream %s: %s has more than %d pages; truncated", up.name, method, MAX_PAGES)
        return items

    async def ensure_discovered(self, view: View) -> View:
        """The view to answer a list from, at once: a failed upstream only gets its background retry
        scheduled earlier (rate-limited); the startup wait is `handle`'s."""
        now = time.monotonic()
        for u in view.upstreams:
            if not self.inventories[u].ok and now - self._last_try.get(u, 0.0) >= RETRY_AFTER:
                self._last_try[u] = now
                self.health.kick(u)
        return self.views.get(view.name, view)

    def _notification_handler(self, name: str) -> Any:
        def on_notification(method: str, msg: Message) -> None:
            for listener in self.upstream_listeners:
                listener(name, method, msg)
            if method in _CHANGED:
                spawn(self._changed(name, method), name=f"refresh-{name}")
            elif method == "notifications/resources/updated":
                self._resource_updated(name, msg)
            else:
                log.debug("upstream %s: unsolicited %s", name, method)

        return on_notification

    async def _changed(self, name: str, method: str) -> None:
        await self.cluster.list_changed(name, method)

    def deliver_list_changed(self, name: str, method: str) -> None:
        """Tell this replica's listeners of the views over `name`."""
        for view in self.views.values():
            if name in view.upstreams:
                self.hub.publish(view.name, jsonrpc.notification(method))

    def _resource_updated(self, name: str, msg: Message) -> None:
        self.deliver_resource_updated(name, msg)
        self.cluster.resource_updated(name, msg)

    def deliver_resource_updated(self, name: str, msg: Message) -> None:
        params = msg.get("params") or {}
        uri = params.get("uri")
        if not isinstance(uri, str):
            return
        for view in self.views.values():
            if name in view.upstreams:
                exposed = view.namer.uri(name, uri)
                out = jsonrpc.notification("notifications/resources/updated", {**params, "uri": exposed})
                self.hub.publish(view.name, out, uri=exposed)
