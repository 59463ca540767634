"""The running gateway: upstreams, their inventories, the virtual-server views and the hub.

Discovery runs at start (all upstreams concurrently) and again for one upstream whenever it says
`list_changed`; views are rebuilt from inventories and swapped atomically. A failed upstream is
retried lazily (at most every RETRY_AFTER seconds) when a client asks for a list.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from stile.config.model import GatewayConfig
from stile.core.catalog import Inventory, View, build_view
from stile.core.context import CallContext, CallNext, Reply
from stile.core.hub import Hub
from stile.core.mrtr import InputBridge
from stile.core.router import NO_SPANS, Router, UpstreamSpans
from stile.core.session_guard import SessionGuard
from stile.core.sessions import SessionSealer, resolve_key
from stile.stores.revocations import open_revocation_store
from stile.tasks import spawn
from stile.upstreams.base import Upstream
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
_CHANGED = {
    "notifications/tools/list_changed", "notifications/prompts/list_changed",
    "notifications/resources/list_changed",
}


class Gateway:
    """Upstreams, their inventories, the views, and one policy chain per virtual server.

    It knows nothing of which policies exist: the composition root (`stile.assembly`) builds each
    virtual server's chain around `router.handle` and installs it with `install_chains`.
    """

    def __init__(self, cfg: GatewayConfig, *, spans: UpstreamSpans = NO_SPANS, state_url: str | None = None,
                 credentials: Credentials = NO_CREDENTIALS) -> None:
        self.cfg = cfg
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
        self.sessions = SessionGuard(self.sealer, open_revocation_store(state_url or cfg.state),
                                     lifetime=cfg.limits.session_lifetime, cache_seconds=cfg.auth.key_cache_seconds)
        self.inputs = InputBridge(key)
        self.router = Router(cfg, self.upstreams, self, self.inputs, self.hub, spans)
        self.chains: dict[str, CallNext] = {}
        self._last_try: dict[str, float] = {}
        self._refresh_locks: dict[str, asyncio.Lock] = {n: asyncio.Lock() for n in cfg.upstreams}
        self._rebuild_views()

    def install_chains(self, chains: dict[str, CallNext]) -> None:
        self.chains = dict(chains)

    async def handle(self, ctx: CallContext) -> Reply:
        """The only way a client message reaches the router: through its virtual server's chain."""
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
        for name, up in self.upstreams.items():
            up.on_notification = self._notification_handler(name)
        await asyncio.gather(*(self.refresh(n) for n in self.upstreams))
        for view in self.views.values():
            for problem in view.problems:
                log.warning("virtual server %s: %s", view.name, problem)

    async def stop(self) -> None:
        await asyncio.gather(*(up.aclose() for up in self.upstreams.values()), return_exceptions=True)
        await self.sessions.aclose()

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
                log.warning("upstream %s: discovery failed: %s", name, exc.message)
                inv = Inventory(ok=False, error=exc.message)
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
        """Retry failed upstreams of a view (rate-limited) before answering a list."""
        now = time.monotonic()
        stale = [u for u in view.upstreams if not self.inventories[u].ok
                 and now - self._last_try.get(u, 0.0) >= RETRY_AFTER]
        if stale:
            await asyncio.gather(*(self.refresh(u) for u in stale))
            return self.views[view.name]
        return view

    def _notification_handler(self, name: str) -> Any:
        def on_notification(method: str, msg: Message) -> None:
            if method in _CHANGED:
                spawn(self._changed(name, method), name=f"refresh-{name}")
            elif method == "notifications/resources/updated":
                self._resource_updated(name, msg)
            else:
                log.debug("upstream %s: unsolicited %s", name, method)

        return on_notification

    async def _changed(self, name: str, method: str) -> None:
        await self.refresh(name)
        for view in self.views.values():
            if name in view.upstreams:
                self.hub.publish(view.name, jsonrpc.notification(method))

    def _resource_updated(self, name: str, msg: Message) -> None:
        params = msg.get("params") or {}
        uri = params.get("uri")
        if not isinstance(uri, str):
            return
        for view in self.views.values():
            if name in view.upstreams:
                exposed = view.namer.uri(name, uri)
                out = jsonrpc.notification("notifications/resources/updated", {**params, "uri": exposed})
                self.hub.publish(view.name, out, uri=exposed)
