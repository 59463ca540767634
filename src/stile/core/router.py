"""The terminal handler: maps an exposed request onto its upstream and the answer back.

Lists are answered from the view (gateway-paginated); named requests are resolved through the
view's indexes, rewritten to the upstream's names and forwarded on a reused upstream session.
Progress tokens are remapped per call; server->client requests are relayed to capable clients;
a modern upstream's `input_required` is resolved for legacy clients by asking them and retrying.
"""

from __future__ import annotations

import base64
import binascii
import itertools
from collections.abc import Awaitable, Callable
from dataclasses import replace
from time import perf_counter
from typing import TYPE_CHECKING, Any

import orjson

from stile import __version__
from stile.core.catalog import View, matches
from stile.core.context import CallContext, Reply
from stile.core.results import adapt_reply, rewrite_uris
from stile.observe.tracing import Tracing
from stile.upstreams.base import CallOptions, Upstream
from stile.wire import eras, jsonrpc
from stile.wire.errors import InvalidParams, MethodNotFound, StileError
from stile.wire.headers import check_param_headers, param_headers

if TYPE_CHECKING:
    from stile.core.gateway import Gateway

MAX_INPUT_ROUNDS = 8
_tokens = itertools.count(1)
_CAPABILITY_FOR = {"sampling/createMessage": "sampling", "elicitation/create": "elicitation", "roots/list": "roots"}


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
    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self._methods = {
            "tools/list": self._list, "prompts/list": self._list, "resources/list": self._list,
            "resources/templates/list": self._list, "tools/call": self._call_tool, "prompts/get": self._get_prompt,
            "resources/read": self._by_uri, "resources/subscribe": self._subscribe,
            "resources/unsubscribe": self._subscribe, "completion/complete": self._complete,
            "ping": self._ping, "logging/setLevel": self._set_level, "server/discover": self._discover,
        }

    def _view(self, ctx: CallContext) -> View:
        view = ctx.view or self.gw.view(ctx.virtual_server)
        if view is None:
            raise MethodNotFound(f"unknown virtual server {ctx.virtual_server!r}")
        return view

    async def handle(self, ctx: CallContext) -> Reply:
        fn = self._methods.get(ctx.method)
        if fn is None:
            return await self._passthrough(ctx)
        return await fn(ctx)

    # --- lists ---------------------------------------------------------------------------
    async def _list(self, ctx: CallContext) -> Reply:
        view = self._view(ctx)
        if ctx.view is None:
            view = await self.gw.ensure_discovered(view)
        key, items = {
            "tools/list": ("tools", view.tools), "prompts/list": ("prompts", view.prompts),
            "resources/list": ("resources", view.resources),
            "resources/templates/list": ("resourceTemplates", view.templates),
        }[ctx.method]
        start = _decode_cursor(ctx.params.get("cursor"), ctx.method)
        page_size = self.gw.cfg.virtual_servers[view.name].page_size
        page = items[start:start + page_size]
        result: dict[str, Any] = {key: page}
        if start + page_size < len(items):
            result["nextCursor"] = _encode_cursor(start + page_size, ctx.method)
        if ctx.era == "modern":
            result.update({"resultType": "complete", "ttlMs": 0, "cacheScope": "private"})
        return {"result": result}

    # --- named requests --------------------------------------------------------------------
    async def _call_tool(self, ctx: CallContext) -> Reply:
        view = self._view(ctx)
        name = ctx.params.get("name")
        target = view.tool_index.get(name) if isinstance(name, str) else None
        if target is None:
            raise InvalidParams(f"Unknown tool: {name}")
        args = ctx.params.get("arguments")
        hdrs: dict[str, str] = {}
        if target.header_map:
            args_map = args if isinstance(args, dict) else {}
            if ctx.era == "modern":
                check_param_headers(ctx.headers, target.header_map, args_map)
            hdrs = param_headers(target.header_map, args_map)
        reply = await self.forward(ctx, target.upstream, {**ctx.params, "name": target.original}, hdrs)
        return rewrite_uris(reply, view, target.upstream)

    async def _get_prompt(self, ctx: CallContext) -> Reply:
        view = self._view(ctx)
        name = ctx.params.get("name")
        target = view.prompt_index.get(name) if isinstance(name, str) else None
        if target is None:
            raise InvalidParams(f"Unknown prompt: {name}")
        reply = await self.forward(ctx, target.upstream, {**ctx.params, "name": target.original})
        return rewrite_uris(reply, view, target.upstream)

    def _resolve_uri(self, ctx: CallContext, view: View) -> tuple[str, str]:
        uri = ctx.params.get("uri")
        hit = view.resolve_uri(uri) if isinstance(uri, str) else None
        if hit is None or not self._resource_allowed(view, *hit):
            raise _not_found(ctx, uri)
        return hit

    def _resource_allowed(self, view: View, upstream: str, uri: str) -> bool:
        vs = self.gw.cfg.virtual_servers[view.name]
        ref = f"{upstream}.{uri}"
        if view.resource_filter is not None and not view.resource_filter(upstream, uri):
            return False
        if matches(ref, vs.deny_resources):
            return False
        return vs.allow_resources is None or matches(ref, vs.allow_resources)

    async def _by_uri(self, ctx: CallContext) -> Reply:
        view = self._view(ctx)
        up, uri = self._resolve_uri(ctx, view)
        reply = await self.forward(ctx, up, {**ctx.params, "uri": uri})
        return rewrite_uris(reply, view, up)

    async def _subscribe(self, ctx: CallContext) -> Reply:
        view = self._view(ctx)
        exposed = ctx.params.get("uri")
        up, uri = self._resolve_uri(ctx, view)
        reply = await self.forward(ctx, up, {**ctx.params, "uri": uri})
        if "result" in reply and ctx.session_id is not None and isinstance(exposed, str):
            subs = self.gw.subscriptions.setdefault(ctx.session_id, set())
            if ctx.method == "resources/subscribe":
                subs.add(exposed)
            else:
                subs.discard(exposed)
        return reply

    async def _complete(self, ctx: CallContext) -> Reply:
        view = self._view(ctx)
        ref = ctx.params.get("ref")
        if not isinstance(ref, dict):
            raise InvalidParams("completion/complete needs a `ref` object")
        if ref.get("type") == "ref/prompt":
            name = ref.get("name")
            if not isinstance(name, str):
                raise InvalidParams("completion/complete ref.name must be a string")
            target = view.prompt_index.get(name)
            if target is None:
                raise InvalidParams(f"Unknown prompt: {ref.get('name')}")
            up, new_ref = target.upstream, {**ref, "name": target.original}
        elif ref.get("type") == "ref/resource":
            uri = ref.get("uri")
            if not isinstance(uri, str):
                raise InvalidParams("completion/complete ref.uri must be a string")
            hit = view.resolve_uri(uri)
            if hit is None:
                raise InvalidParams(f"Unknown resource template: {uri}")
            up, new_ref = hit[0], {**ref, "uri": hit[1]}
        else:
            raise InvalidParams("ref.type must be ref/prompt or ref/resource")
        return await self.forward(ctx, up, {**ctx.params, "ref": new_ref})

    # --- local answers ---------------------------------------------------------------------
    async def _ping(self, ctx: CallContext) -> Reply:
        return {"result": {}}

    async def _set_level(self, ctx: CallContext) -> Reply:
        view = self._view(ctx)
        legacy = CallOptions(client_era="legacy")
        for name in view.upstreams:
            up = self.gw.upstreams[name]
            if "logging" in up.capabilities:
                try:  # best effort, on the upstream's (shared) legacy session; modern-only upstreams refuse it
                    await up.request("logging/setLevel", dict(ctx.params), legacy)
                except StileError:
                    continue
        return {"result": {}}

    async def _discover(self, ctx: CallContext) -> Reply:
        view = self._view(ctx)
        result: dict[str, Any] = {
            "resultType": "complete", "supportedVersions": list(eras.MODERN_VERSIONS),
            "capabilities": server_capabilities(view), "ttlMs": 0, "cacheScope": "private",
            "_meta": {eras.META_SERVER_INFO: server_info(view)},
        }
        instructions = self.gw.cfg.virtual_servers[view.name].instructions
        if instructions is None and len(view.upstreams) == 1:
            instructions = self.gw.upstreams[view.upstreams[0]].instructions
        if instructions:
            result["instructions"] = instructions
        return {"result": result}

    async def _passthrough(self, ctx: CallContext) -> Reply:
        view = self._view(ctx)
        if len(view.upstreams) != 1:
            raise MethodNotFound(f"Method not found: {ctx.method}")
        return await self.forward(ctx, view.upstreams[0], dict(ctx.params))

    # --- the upstream leg ------------------------------------------------------------------
    async def forward(self, ctx: CallContext, upstream: str, params: dict[str, Any],
                      headers: dict[str, str] | None = None) -> Reply:
        up = self.gw.upstreams[upstream]
        meta = params.get("_meta")
        client_token = meta.get("progressToken") if isinstance(meta, dict) else None
        up_token: str | None = None
        if client_token is not None and isinstance(meta, dict):
            up_token = f"stile-{next(_tokens)}"
            params = {**params, "_meta": {**meta, "progressToken": up_token}}

        async def on_message(msg: jsonrpc.Message) -> None:
            p = msg.get("params")
            if msg.get("method") == "notifications/progress" and isinstance(p, dict):
                msg = {**msg, "params": {**p, "progressToken": client_token}}
            await ctx.channel.notify(msg)

        async def on_request(method: str, p: dict[str, Any]) -> dict[str, Any]:
            if method == "ping":
                return {}
            cap = _CAPABILITY_FOR.get(method)
            if not ctx.channel.can_request or (cap is not None and cap not in ctx.client_caps):
                raise MethodNotFound(f"the client does not support {method}")
            return await ctx.channel.request(method, p)

        tracing = self.gw.tracing
        span = tracing.start_upstream(ctx, upstream, params) if tracing.spans else None  # the upstream's parent
        opts = CallOptions(on_message=on_message, on_request=on_request, client_caps=ctx.client_caps,
                           client_era=ctx.era,
                           client_info=ctx.client_info, log_level=ctx.log_level, progress_token=up_token,
                           extra_headers=headers or {}, trace_headers=Tracing.upstream_headers(ctx, span))
        stats = ctx.stats
        started = perf_counter()
        try:
            if ctx.era == "modern" and up.era == "legacy" and ctx.method in eras.NAMED_METHODS:
                reply = adapt_reply(await self._bridge_inputs(ctx, up, params, opts), ctx.era, up.era)
            else:
                reply = await self._exchange(ctx, up, params, opts, on_request)
        except BaseException as exc:
            if span is not None:
                Tracing.end_upstream(span, None, exc)
            raise
        finally:
            stats.upstream_seconds += perf_counter() - started
        if span is not None:
            Tracing.end_upstream(span, reply)
        return reply

    async def _exchange(self, ctx: CallContext, up: Upstream, params: dict[str, Any], opts: CallOptions,
                        on_request: Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]) -> Reply:
        """One request upstream, plus the rounds a modern upstream's `input_required` takes for a legacy client."""
        reply = await up.request(ctx.method, params, opts)
        rounds = 0
        while ctx.era == "legacy" and _input_required(reply) and ctx.channel.can_request:
            rounds += 1
            if rounds > MAX_INPUT_ROUNDS:
                raise StileError(f"upstream {up.name!r} asked for input more than {MAX_INPUT_ROUNDS} times")
            res = reply["result"]
            answers: dict[str, Any] = {}
            for key, req in (res.get("inputRequests") or {}).items():
                answers[key] = await on_request(req.get("method", ""), req.get("params") or {})
            retry = {k: v for k, v in params.items() if k not in ("inputResponses", "requestState")}
            retry["inputResponses"] = answers
            if "requestState" in res:
                retry["requestState"] = res["requestState"]
            reply = await up.request(ctx.method, retry, opts)
        return adapt_reply(reply, ctx.era, up.era)

    async def _bridge_inputs(self, ctx: CallContext, up: Upstream, params: dict[str, Any],
                             opts: CallOptions) -> Reply:
        """A legacy upstream's server->client requests, asked of a modern client through MRTR."""
        bridge = self.gw.inputs
        binding = _binding(ctx, up.name, params)
        if bridge.owns(params):
            return await bridge.resume(params, binding)
        clean = {k: v for k, v in params.items() if k not in ("inputResponses", "requestState")}

        async def call(ask: Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]) -> Reply:
            async def on_request(method: str, p: dict[str, Any]) -> dict[str, Any]:
                if method == "ping":
                    return {}
                cap = _CAPABILITY_FOR.get(method)
                if cap is None or cap not in ctx.client_caps:
                    raise MethodNotFound(f"the client does not support {method}")
                return await ask(method, p)

            return await up.request(ctx.method, clean, replace(opts, on_request=on_request))

        return await bridge.start(call, binding)


def _binding(ctx: CallContext, upstream: str, params: dict[str, Any]) -> str:
    key = eras.NAMED_METHODS.get(ctx.method, "name")
    return f"{ctx.virtual_server}|{upstream}|{ctx.method}|{params.get(key)}"


def _input_required(reply: Reply) -> bool:
    res = reply.get("result")
    return isinstance(res, dict) and res.get("resultType") == "input_required"


def _not_found(ctx: CallContext, uri: Any) -> StileError:
    err = InvalidParams(f"Resource not found: {uri}", data={"uri": uri})
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
