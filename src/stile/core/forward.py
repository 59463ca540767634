"""The upstream leg of a request: one call on a reused upstream session, and what it takes to finish it.

Progress tokens are remapped per call; server->client requests are relayed to capable clients; a
modern upstream's `input_required` is resolved for legacy clients by asking them and retrying; a
legacy upstream's server->client requests reach modern clients as MRTR `input_required`.
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from time import perf_counter
from typing import Any, Protocol

from stile.core import consent
from stile.core.context import CallContext, Reply
from stile.core.mrtr import InputBridge
from stile.core.results import adapt_reply
from stile.core.sessions import owner_of
from stile.upstreams.base import CallOptions, Upstream
from stile.upstreams.credentials import Caller
from stile.wire import eras, jsonrpc
from stile.wire.errors import ConsentRequired, MethodNotFound, StileError

MAX_INPUT_ROUNDS = 8
_tokens = itertools.count(1)
_CAPABILITY_FOR = {"sampling/createMessage": "sampling", "elicitation/create": "elicitation", "roots/list": "roots"}


class UpstreamSpans(Protocol):
    """Tracing of upstream calls (implemented by `stile.observe.tracing.Tracing`)."""

    @property
    def spans(self) -> bool: ...

    def start_upstream(self, ctx: CallContext, upstream: str, params: Mapping[str, Any]) -> Any: ...

    def end_upstream(self, span: Any, reply: Mapping[str, Any] | None, exc: BaseException | None = None) -> None: ...

    def upstream_headers(self, ctx: CallContext, span: Any = None) -> dict[str, str]: ...


class _NoSpans:
    spans = False

    def start_upstream(self, ctx: CallContext, upstream: str, params: Mapping[str, Any]) -> Any:
        return None

    def end_upstream(self, span: Any, reply: Mapping[str, Any] | None, exc: BaseException | None = None) -> None:
        return None

    def upstream_headers(self, ctx: CallContext, span: Any = None) -> dict[str, str]:
        return {}


NO_SPANS: UpstreamSpans = _NoSpans()


class UpstreamLeg:
    def __init__(self, upstreams: Mapping[str, Upstream], inputs: InputBridge, spans: UpstreamSpans) -> None:
        self.upstreams = upstreams
        self.inputs = inputs
        self.spans = spans

    async def forward(self, ctx: CallContext, upstream: str, params: dict[str, Any],
                      headers: dict[str, str] | None = None) -> Reply:
        up = self.upstreams[upstream]
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

        spans = self.spans
        span = spans.start_upstream(ctx, upstream, params) if spans.spans else None  # the upstream's parent
        p = ctx.principal
        scope = p.claims.get("scope") if p.claims else None
        caller = Caller(p.user, p.agent, scope if isinstance(scope, str) else "", _bearer(ctx))
        opts = CallOptions(on_message=on_message, on_request=on_request, client_caps=ctx.client_caps,
                           client_era=ctx.era,
                           client_info=ctx.client_info, log_level=ctx.log_level, progress_token=up_token,
                           extra_headers=headers or {}, trace_headers=spans.upstream_headers(ctx, span),
                           affinity=ctx.session_id or owner_of(ctx.principal) or None, caller=caller)
        stats = ctx.stats
        started = perf_counter()
        try:
            params, resumed = consent.strip_resume(params)
            try:
                reply = await self._call(ctx, up, params, opts, on_request)
            except ConsentRequired as need:  # user_oauth: the user approves in a browser, then the call goes on
                asked = await consent.ask(ctx, need, resumed)  # 2026-07-28: input_required, retried after consent
                reply = asked if asked is not None else await self._call(ctx, up, params, opts, on_request)
        except BaseException as exc:
            if span is not None:
                spans.end_upstream(span, None, exc)
            raise
        finally:
            stats.upstream_seconds += perf_counter() - started
            if caller.used is not None:
                stats.identity = {"upstream": upstream, **caller.used}
        if span is not None:
            spans.end_upstream(span, reply)
        return reply

    async def _call(self, ctx: CallContext, up: Upstream, params: dict[str, Any], opts: CallOptions,
                    on_request: Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]) -> Reply:
        if ctx.era == "modern" and up.era == "legacy" and ctx.method in eras.NAMED_METHODS:
            return adapt_reply(await self._bridge_inputs(ctx, up, params, opts), ctx.era, up.era)
        return await self._exchange(ctx, up, params, opts, on_request)

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
            requests = res.get("inputRequests")
            for key, req in (requests.items() if isinstance(requests, dict) else ()):
                if isinstance(req, dict):
                    answers[key] = await on_request(str(req.get("method", "")), req.get("params") or {})
            retry = {k: v for k, v in params.items() if k not in ("inputResponses", "requestState")}
            retry["inputResponses"] = answers
            if "requestState" in res:
                retry["requestState"] = res["requestState"]
            reply = await up.request(ctx.method, retry, opts)
        res = reply.get("result")
        if isinstance(res, dict) and "ttlMs" in res:  # a modern upstream's freshness hint (legacy clients lose it)
            ctx.stats.cache_hint = (res.get("ttlMs"), res.get("cacheScope"))
        return adapt_reply(reply, ctx.era, up.era)

    async def _bridge_inputs(self, ctx: CallContext, up: Upstream, params: dict[str, Any],
                             opts: CallOptions) -> Reply:
        """A legacy upstream's server->client requests, asked of a modern client through MRTR."""
        bridge = self.inputs
        binding = _binding(ctx, up.name, params)
        owner = owner_of(ctx.principal)
        if bridge.owns(params):
            return await bridge.resume(params, binding, owner)
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

        return await bridge.start(call, binding, owner)


def _bearer(ctx: CallContext) -> str | None:
    """The caller's incoming bearer token, when it authenticated with one (a validated JWT)."""
    if ctx.principal.method != "jwt":
        return None
    auth = ctx.headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def _binding(ctx: CallContext, upstream: str, params: dict[str, Any]) -> str:
    """What a sealed requestState is bound to (with the owner, sealed beside it): the call."""
    key = eras.NAMED_METHODS.get(ctx.method, "name")
    return f"{ctx.virtual_server}|{upstream}|{ctx.method}|{params.get(key)}"


def _input_required(reply: Reply) -> bool:
    res = reply.get("result")
    return isinstance(res, dict) and res.get("resultType") == "input_required"
