"""The terminal handler of every chain: maps an exposed request onto its upstream and the answer back.

The router dispatches on the method table (`stile.wire.methods`): one handler per kind. Lists are
answered from the view (gateway-paginated); named requests are resolved through the view's indexes,
rewritten to the upstream's names and forwarded on a reused upstream session (`core.forward`).
Anything the view does not show, hidden or nonexistent, gets one canonical answer and is never
forwarded. Methods the table does not classify are refused unless the virtual server lists them in
`passthrough_methods` and the caller's roles grant them.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

import orjson

from stile import __version__
from stile.config.model import GatewayConfig
from stile.core.catalog import View, matches
from stile.core.context import CallContext, Reply
from stile.core.forward import NO_SPANS, UpstreamLeg, UpstreamSpans
from stile.core.hub import Hub
from stile.core.mrtr import InputBridge
from stile.core.results import rewrite_uris
from stile.upstreams.base import Upstream
from stile.wire import eras, methods
from stile.wire.errors import InvalidParams, MethodNotFound, StileError
from stile.wire.headers import check_param_headers, param_headers

if TYPE_CHECKING:
    from stile.core.catalog import ViewSource

__all__ = ["NO_SPANS", "Router", "UpstreamSpans", "server_capabilities", "server_info"]
LISTEN_FLAGS = {
    "toolsListChanged": "notifications/tools/list_changed",
    "promptsListChanged": "notifications/prompts/list_changed",
    "resourcesListChanged": "notifications/resources/list_changed",
}
_LIST_KEYS = {"tools/list": "tools", "prompts/list": "prompts", "resources/list": "resources",
              "resources/templates/list": "resourceTemplates"}
_NOT_FOUND_CODES = frozenset({-32002, -32602})
Handler = Callable[[CallContext, View], Awaitable[Reply]]


def server_capabilities(view: View) -> dict[str, Any]:
    return {
        "tools": {"listChanged": True},
        "resources": {"subscribe": True, "listChanged": True},
        "prompts": {"listChanged": True},
        "completions": {},
        "logging": {},
    }


def server_info(view: View) -> dict[str, Any]:
    return {"name": f"stile/{view.name}", "version": __version__}


class Router:
    def __init__(self, cfg: GatewayConfig, upstreams: Mapping[str, Upstream], views: ViewSource,
                 inputs: InputBridge, hub: Hub, spans: UpstreamSpans = NO_SPANS) -> None:
        self.cfg = cfg
        self.upstreams = upstreams
        self.views = views
        self.hub = hub
        self.leg = UpstreamLeg(upstreams, inputs, spans)
        self.forward = self.leg.forward
        # one handler per method of the table (a test keeps the two in step)
        self.handlers: dict[str, Handler] = {
            "initialize": self._initialize, "ping": self._ping, "logging/setLevel": self._set_level,
            "server/discover": self._discover,
            "tools/list": self._list, "prompts/list": self._list, "resources/list": self._list,
            "resources/templates/list": self._list,
            "tools/call": self._call_tool, "prompts/get": self._get_prompt, "resources/read": self._read,
            "resources/subscribe": self._subscribe, "resources/unsubscribe": self._subscribe,
            "completion/complete": self._complete, "subscriptions/listen": self._listen,
            methods.GET_STREAM: self._admit, methods.SSE_STREAM: self._admit,
            "notifications/initialized": self._admit, "notifications/cancelled": self._admit,
            "notifications/progress": self._admit, "notifications/roots/list_changed": self._admit,
        }

    def _view(self, ctx: CallContext) -> View:
        view = ctx.view or self.views.view(ctx.virtual_server)
        if view is None:
            raise MethodNotFound(f"unknown virtual server {ctx.virtual_server!r}")
        return view

    async def handle(self, ctx: CallContext) -> Reply:
        view = self._view(ctx)
        spec = methods.classify(ctx.method, ctx.era)
        if spec is None:
            return await self._passthrough(ctx, view)
        return await self.handlers[spec.name](ctx, view)

    # --- lists ---------------------------------------------------------------------------
    async def _list(self, ctx: CallContext, view: View) -> Reply:
        if ctx.view is None:
            view = await self.views.ensure_discovered(view)
        key = _LIST_KEYS[ctx.method]
        items = {"tools": view.tools, "prompts": view.prompts, "resources": view.resources,
                 "resourceTemplates": view.templates}[key]
        start = _decode_cursor(ctx.params.get("cursor"), ctx.method)
        page_size = self.cfg.virtual_servers[view.name].page_size
        result: dict[str, Any] = {key: items[start:start + page_size]}
        if start + page_size < len(items):
            result["nextCursor"] = _encode_cursor(start + page_size, ctx.method)
        if ctx.era == "modern":
            result.update({"resultType": "complete", "ttlMs": 0, "cacheScope": "private"})
        return {"result": result}

    # --- named requests --------------------------------------------------------------------
    async def _call_tool(self, ctx: CallContext, view: View) -> Reply:
        name = ctx.params.get("name")
        target = view.tool_index.get(name) if isinstance(name, str) else None
        if target is None:
            raise InvalidParams(f"Unknown tool: {_shown(name)}")
        args = ctx.params.get("arguments")
        hdrs: dict[str, str] = {}
        if target.header_map:
            args_map = args if isinstance(args, dict) else {}
            if ctx.era == "modern":
                check_param_headers(ctx.headers, target.header_map, args_map)
            hdrs = param_headers(target.header_map, args_map)
        reply = await self.forward(ctx, target.upstream, {**ctx.params, "name": target.original}, hdrs)
        return rewrite_uris(reply, view, target.upstream)

    async def _get_prompt(self, ctx: CallContext, view: View) -> Reply:
        name = ctx.params.get("name")
        target = view.prompt_index.get(name) if isinstance(name, str) else None
        if target is None:
            raise InvalidParams(f"Unknown prompt: {_shown(name)}")
        reply = await self.forward(ctx, target.upstream, {**ctx.params, "name": target.original})
        return rewrite_uris(reply, view, target.upstream)

    def _visible(self, ctx: CallContext, view: View) -> tuple[str, str]:
        uri = ctx.params.get("uri")
        hit = view.visible_uri(uri)
        if hit is None:
            raise _not_found(ctx, uri)
        return hit

    async def _read(self, ctx: CallContext, view: View) -> Reply:
        up, uri = self._visible(ctx, view)
        reply = await self.forward(ctx, up, {**ctx.params, "uri": uri})
        err = reply.get("error")
        if isinstance(err, dict) and err.get("code") in _NOT_FOUND_CODES and "not found" in str(
                err.get("message", "")).lower():
            raise _not_found(ctx, ctx.params.get("uri"))  # one canonical not-found, whoever said it
        return rewrite_uris(reply, view, up)

    async def _subscribe(self, ctx: CallContext, view: View) -> Reply:
        exposed = ctx.params.get("uri")
        up, uri = self._visible(ctx, view)
        reply = await self.forward(ctx, up, {**ctx.params, "uri": uri})
        if "result" in reply and ctx.session_id is not None and isinstance(exposed, str):
            await self.hub.subscribe_uri(ctx.session_id, exposed, ctx.method == "resources/subscribe")
        return reply

    async def _complete(self, ctx: CallContext, view: View) -> Reply:
        ref = ctx.params.get("ref")
        if not isinstance(ref, dict):
            raise InvalidParams("completion/complete needs a `ref` object")
        kind = ref.get("type")
        if kind == "ref/prompt":
            name = ref.get("name")
            target = view.prompt_index.get(name) if isinstance(name, str) else None
            if target is None:
                raise InvalidParams(f"Unknown prompt: {_shown(name)}")
            up, new_ref = target.upstream, {**ref, "name": target.original}
        elif kind == "ref/resource":
            uri = ref.get("uri")
            hit = view.visible_template(uri)
            if hit is None or not self._resource_admitted(view, *hit):
                raise InvalidParams(f"Unknown resource template: {_shown(uri)}")
            up, new_ref = hit[0], {**ref, "uri": hit[1]}
        else:
            raise InvalidParams("ref.type must be ref/prompt or ref/resource")
        return await self.forward(ctx, up, {**ctx.params, "ref": new_ref})

    @staticmethod
    def _resource_admitted(view: View, upstream: str, uri: str) -> bool:
        if view.resource_rule is not None and not view.resource_rule(f"{upstream}.{uri}"):
            return False
        return view.resource_filter is None or view.resource_filter(upstream, uri)

    # --- streams, sessions and notifications: admitted here, served by the frontend ---------
    async def _initialize(self, ctx: CallContext, view: View) -> Reply:
        result: dict[str, Any] = {"protocolVersion": ctx.protocol_version,
                                  "capabilities": server_capabilities(view), "serverInfo": server_info(view)}
        instructions = self._instructions(view)
        if instructions:
            result["instructions"] = instructions
        return {"result": result}

    async def _admit(self, ctx: CallContext, view: View) -> Reply:
        return {"result": {}}

    async def _listen(self, ctx: CallContext, view: View) -> Reply:
        """`subscriptions/listen`: what the stream will deliver. Every requested URI is acknowledged;
        only the visible ones are subscribed upstream and delivered (hidden ones look nonexistent)."""
        wanted = ctx.params.get("notifications")
        wanted = wanted if isinstance(wanted, dict) else {}
        honored: dict[str, Any] = {k: True for k in LISTEN_FLAGS if wanted.get(k) is True}
        uris = wanted.get("resourceSubscriptions")
        requested = sorted({u for u in uris if isinstance(u, str)}) if isinstance(uris, list) else []
        cap = self.cfg.limits.max_listen_subscriptions
        if len(requested) > cap:
            raise InvalidParams(f"at most {cap} resourceSubscriptions per listen request", http_status=400)
        deliver: list[str] = []
        if requested:
            honored["resourceSubscriptions"] = requested
            hits = {u: view.visible_uri(u) for u in requested}
            deliver = [u for u, hit in hits.items() if hit is not None]
            await asyncio.gather(*(self._subscribe_upstream(*hit) for hit in hits.values() if hit is not None))
        return {"result": {"notifications": honored, "deliver": deliver}}

    async def _subscribe_upstream(self, upstream: str, uri: str) -> None:
        with contextlib.suppress(StileError):  # best effort: the upstream may not support it
            await self.upstreams[upstream].request("resources/subscribe", {"uri": uri})

    # --- local answers ---------------------------------------------------------------------
    async def _ping(self, ctx: CallContext, view: View) -> Reply:
        return {"result": {}}

    async def _set_level(self, ctx: CallContext, view: View) -> Reply:
        """Acknowledged, never forwarded: an upstream's legacy session is shared by every client, so one
        caller's level would change what every other caller's calls log (a cross-tenant side effect).
        Modern upstreams get each request's own level in `_meta`."""
        level = ctx.params.get("level")
        if not isinstance(level, str):
            raise InvalidParams("logging/setLevel needs a string `level`")
        return {"result": {}}

    async def _discover(self, ctx: CallContext, view: View) -> Reply:
        result: dict[str, Any] = {
            "resultType": "complete", "supportedVersions": list(eras.MODERN_VERSIONS),
            "capabilities": server_capabilities(view), "ttlMs": 0, "cacheScope": "private",
            "_meta": {eras.META_SERVER_INFO: server_info(view)},
        }
        instructions = self._instructions(view)
        if instructions:
            result["instructions"] = instructions
        return {"result": result}

    def _instructions(self, view: View) -> str | None:
        text = self.cfg.virtual_servers[view.name].instructions
        if text is None and len(view.upstreams) == 1:
            text = self.upstreams[view.upstreams[0]].instructions
        return text

    async def _passthrough(self, ctx: CallContext, view: View) -> Reply:
        """An unclassified method: forwarded only when the virtual server lists it and the roles grant it."""
        routes = self.cfg.virtual_servers[view.name].passthrough_methods
        upstream = next((up for pattern, up in routes.items() if matches(ctx.method, [pattern])), None)
        granted = view.method_filter is None or view.method_filter(ctx.method)
        if upstream is None or upstream not in view.upstreams or not granted or ctx.request_id is None:
            raise MethodNotFound(f"Method not found: {_shown(ctx.method)}",
                                 http_status=404 if ctx.era == "modern" else 200)
        return await self.forward(ctx, upstream, dict(ctx.params))


def _shown(value: Any) -> str:
    """A client-supplied value quoted in an error message, bounded."""
    text = value if isinstance(value, str) else orjson.dumps(value, default=str).decode()
    return text if len(text) <= 256 else text[:256] + "..."


def _not_found(ctx: CallContext, uri: Any) -> StileError:
    err = InvalidParams(f"Resource not found: {_shown(uri)}", data={"uri": uri if isinstance(uri, str) else None})
    if ctx.era == "legacy":
        err.jsonrpc_code = -32002
    return err


def _encode_cursor(offset: int, method: str) -> str:
    return base64.urlsafe_b64encode(orjson.dumps({"o": offset, "m": method})).decode()


def _decode_cursor(cursor: Any, method: str) -> int:
    if cursor is None:
        return 0
    if not isinstance(cursor, str):
        raise InvalidParams("cursor must be a string")
    if cursor == "":
        return 0
    try:
        data = orjson.loads(base64.urlsafe_b64decode(cursor.encode()))
    except (binascii.Error, ValueError) as exc:
        raise InvalidParams("invalid cursor") from exc
    if not isinstance(data, dict) or data.get("m") != method or not isinstance(data.get("o"), int) or data["o"] < 0:
        raise InvalidParams("invalid cursor")
    return int(data["o"])
