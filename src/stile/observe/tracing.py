"""W3C trace context through the gateway (and OpenTelemetry spans when `tracing.enabled`).

Every request gets a trace context: the client's `traceparent`/`tracestate` (HTTP headers, or `_meta`
for requests that carry it there) or a fresh one. Stile's own hop gets a new span id, and the upstream
request carries Stile's `traceparent` (HTTP header, plus `_meta` for every era), so the upstream's spans
hang under Stile's and share the client's trace id.

With `tracing.enabled`, Stile records spans with its own OpenTelemetry `TracerProvider` (never the global
one): per request a SERVER span (parent: the client's context), an INTERNAL `stile policies` span for the
request-side policy stage (it ends when the router starts the upstream leg, or with the request), and
one CLIENT span per upstream call, whose id is the parent the upstream sees. Names and attributes follow
the OpenTelemetry MCP semantic conventions (`{mcp.method.name} {target}`, `mcp.*`, `gen_ai.*`, `error.type`)
plus `stile.*`. Sampling is `ParentBased(TraceIdRatioBased(sample_ratio))`; an unsampled request records
nothing but still propagates. Spans are exported in batches by OTLP/HTTP (protobuf) to `otlp_endpoint`
with `otlp_headers`; without an endpoint the exporter's own defaults apply (`OTEL_EXPORTER_OTLP_TRACES_*`
/ `OTEL_EXPORTER_OTLP_*`, else http://localhost:4318/v1/traces); `OTEL_BSP_*` tune the batching.
Call `aclose()` (or `shutdown()`) when the gateway stops, so the last batch is flushed.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from random import getrandbits
from typing import Any

from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import (
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    Tracer,
    TraceState,
    set_span_in_context,
)

from stile import __version__
from stile.config.observe import TracingConfig
from stile.core.context import CallContext
from stile.wire.errors import StileError

_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-[\x21-\x7e]*)?")
_MAX_TRACEPARENT = 256
# W3C tracestate list-member: key (simple, or tenant@system) "=" value of printable ASCII but "," and "="
_TS_KEY = r"(?:[a-z][a-z0-9_\-*/]{0,255}|[a-z0-9][a-z0-9_\-*/]{0,240}@[a-z][a-z0-9_\-*/]{0,13})"
_TS_MEMBER = re.compile(_TS_KEY + r"=[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]")
_MAX_TS_MEMBERS = 32
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16
_ROOT = Context()  # an explicit empty parent: a request without a client context starts a new trace
_TARGET = {"tools/call": "gen_ai.tool.name", "prompts/get": "gen_ai.prompt.name"}
_URI_METHODS = frozenset({"resources/read", "resources/subscribe", "resources/unsubscribe"})
_MAX_TRACESTATE = 512


def parse_traceparent(value: Any) -> tuple[str, str, str] | None:
    """(trace id, parent span id, flags) of a valid traceparent, else None.

    Version 00 must be exactly four fields; a higher version may carry more after them (W3C: parse what
    version 00 defines and ignore the rest); version ff, all-zero ids and uppercase hex are invalid.
    """
    if not isinstance(value, str) or len(value) > _MAX_TRACEPARENT:
        return None
    m = _TRACEPARENT.fullmatch(value.strip(" \t"))
    if m is None or m.group(1) == "ff" or m.group(2) == _ZERO_TRACE or m.group(3) == _ZERO_SPAN:
        return None
    if m.group(5) is not None and m.group(1) == "00":
        return None
    return m.group(2), m.group(3), m.group(4)


def valid_tracestate(value: Any) -> str | None:
    """`value` if it is a W3C tracestate (at most 32 list-members, 512 characters), else None.

    Anything else (CR/LF, non-ASCII, malformed members) is dropped whole, as the W3C spec asks.
    """
    if not isinstance(value, str) or len(value) > _MAX_TRACESTATE:
        return None
    members = [m.strip(" \t") for m in value.split(",")]
    members = [m for m in members if m]
    if len(members) > _MAX_TS_MEMBERS or not all(_TS_MEMBER.fullmatch(m) for m in members):
        return None
    return ",".join(members) or None


def incoming(ctx: CallContext) -> tuple[str | None, str | None]:
    """The client's traceparent and tracestate: HTTP headers first, then `params._meta`."""
    tp = ctx.headers.get("traceparent")
    ts = ctx.headers.get("tracestate")
    if tp is None:
        meta = ctx.params.get("_meta")
        if isinstance(meta, dict):
            tp, ts = meta.get("traceparent"), meta.get("tracestate")
    return (tp if isinstance(tp, str) else None), (ts if isinstance(ts, str) else None)


def traceparent_of(span: Span) -> str:
    """The W3C traceparent naming `span` as the parent (sampled bit only, as version 00 defines)."""
    sc = span.get_span_context()
    return f"00-{sc.trace_id:032x}-{sc.span_id:016x}-{'01' if sc.trace_flags.sampled else '00'}"


class _Trace:
    """One recorded request's spans (kept in `RequestStats.span` while it runs)."""

    __slots__ = ("context", "server", "stage")

    def __init__(self, server: Span, stage: Span | None, context: Context) -> None:
        self.server = server
        self.stage = stage  # the request-side policy stage, until the upstream leg starts
        self.context = context  # the server span as a parent for the child spans

    def end_stage(self) -> None:
        if self.stage is not None:
            self.stage.end()
            self.stage = None


class Tracing:
    def __init__(self, cfg: TracingConfig, exporter: SpanExporter | None = None) -> None:
        """`exporter` replaces the OTLP exporter (tests pass an in-memory one); used only when enabled."""
        self.cfg = cfg
        self.provider: TracerProvider | None = None
        self._tracer: Tracer | None = None
        self.spans = cfg.enabled  # read by the router: is there an upstream span to make?
        if cfg.enabled:
            if exporter is None:
                exporter = _otlp_exporter(cfg)
            self.provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(cfg.sample_ratio)),
                                           resource=Resource.create({"service.name": cfg.service_name,
                                                                     "service.version": __version__}))
            self.provider.add_span_processor(BatchSpanProcessor(exporter))
            self._tracer = self.provider.get_tracer("stile", __version__)

    def begin(self, ctx: CallContext) -> None:
        """Give the request its trace context (continuing the client's when it sent a valid one)."""
        tp, ts = incoming(ctx)
        parsed = parse_traceparent(tp)
        stats = ctx.stats
        ts = None if parsed is None else valid_tracestate(ts)
        stats.tracestate = ts
        if self._tracer is None:
            if parsed is None:  # ids need uniqueness, not secrecy: the SDK's own generator uses getrandbits too
                trace_id, flags = f"{getrandbits(128) or 1:032x}", "01"
            else:
                trace_id, _, flags = parsed
            stats.trace_id = trace_id
            stats.traceparent = f"00-{trace_id}-{getrandbits(64) or 1:016x}-{flags}"
            return
        parent = _ROOT if parsed is None else _remote(parsed, ts)
        method = ctx.method
        attrs: dict[str, Any] = {"mcp.method.name": method, "mcp.protocol.version": ctx.protocol_version,
                                 "stile.virtual_server": ctx.virtual_server}
        target = _attach_target(attrs, method, ctx.params)
        if ctx.request_id is not None:
            attrs["jsonrpc.request.id"] = str(ctx.request_id)
        if ctx.session_id is not None:
            attrs["mcp.session.id"] = ctx.session_id
        agent = ctx.principal.agent
        if agent is not None:
            attrs["stile.agent"] = agent
        span = self._tracer.start_span(f"{method} {target}" if target else method, context=parent,
                                       kind=SpanKind.SERVER, attributes=attrs)
        stats.trace_id = f"{span.get_span_context().trace_id:032x}"
        stats.traceparent = traceparent_of(span)
        if span.is_recording():
            here = set_span_in_context(span, parent)
            stats.span = _Trace(span, self._tracer.start_span("stile policies", context=here), here)

    def end(self, ctx: CallContext, outcome: str, error_type: str | None = None, code: int | None = None,
            message: str | None = None, upstream: str = "") -> None:
        """Close the request's spans: `outcome` ok | is_error | error | denied, with the JSON-RPC error if any."""
        trace = ctx.stats.span
        if not isinstance(trace, _Trace):
            return
        ctx.stats.span = None
        span = trace.server
        attrs = {"stile.outcome": outcome}
        if upstream:
            attrs["stile.upstream"] = upstream
        if outcome != "ok":
            if outcome == "is_error":
                attrs["error.type"] = "tool_error"
            else:
                attrs["error.type"] = str(code) if code is not None else error_type or "_OTHER"
                if code is not None:
                    attrs["rpc.response.status_code"] = attrs["error.type"]
                if error_type:
                    attrs["stile.error"] = error_type
                if trace.stage is not None:  # ended before the upstream leg: the stage (or router) refused it
                    trace.stage.set_status(Status(StatusCode.ERROR, message))
            span.set_status(Status(StatusCode.ERROR, message))
        span.set_attributes(attrs)
        trace.end_stage()
        span.end()

    def start_upstream(self, ctx: CallContext, upstream: str, params: Mapping[str, Any]) -> Span | None:
        """A CLIENT span for one upstream request of a recorded request (None when it is not recorded)."""
        trace = ctx.stats.span
        if not isinstance(trace, _Trace) or self._tracer is None:
            return None
        trace.end_stage()
        method = ctx.method
        attrs: dict[str, Any] = {"mcp.method.name": method, "stile.upstream": upstream}
        target = _attach_target(attrs, method, params)
        return self._tracer.start_span(f"{method} {target}" if target else method, context=trace.context,
                                       kind=SpanKind.CLIENT, attributes=attrs)

    @staticmethod
    def end_upstream(span: Span, reply: Mapping[str, Any] | None, exc: BaseException | None = None) -> None:
        """Close an upstream span with the reply it got (JSON-RPC error, tool error) or the exception raised."""
        if exc is not None:
            kind = type(exc).__name__
            if isinstance(exc, StileError):
                span.set_attribute("rpc.response.status_code", str(exc.jsonrpc_code))
            span.set_attribute("error.type", kind)
            span.set_status(Status(StatusCode.ERROR, str(exc) or kind))
        elif reply is not None:
            err = reply.get("error")
            if isinstance(err, dict):
                code = str(err.get("code"))
                msg = err.get("message")
                span.set_attributes({"error.type": code, "rpc.response.status_code": code})
                span.set_status(Status(StatusCode.ERROR, msg if isinstance(msg, str) else None))
            else:
                result = reply.get("result")
                if isinstance(result, dict) and result.get("isError") is True:
                    span.set_attribute("error.type", "tool_error")
                    span.set_status(Status(StatusCode.ERROR))
        span.end()

    @staticmethod
    def upstream_headers(ctx: CallContext, span: Span | None = None) -> dict[str, str]:
        """Stile's trace context for the upstream request (transports add `_meta` where the era calls for it).

        The parent named is `span` (the upstream leg's CLIENT span) when there is one, else Stile's hop.
        """
        tp = ctx.stats.traceparent if span is None else traceparent_of(span)
        if tp is None:
            return {}
        if ctx.stats.tracestate:
            return {"traceparent": tp, "tracestate": ctx.stats.tracestate}
        return {"traceparent": tp}

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Export every span ended so far (blocking); True when done in time (or nothing to do)."""
        return self.provider.force_flush(timeout_millis) if self.provider is not None else True

    def shutdown(self) -> None:
        """Flush the last spans and stop the exporter (blocking; idempotent). Spans after this are dropped."""
        provider, self.provider, self._tracer, self.spans = self.provider, None, None, False
        if provider is not None:
            provider.shutdown()

    async def aclose(self) -> None:
        """`shutdown()` off the event loop (the final export may wait on the collector)."""
        if self.provider is not None:
            await asyncio.to_thread(self.shutdown)


def _otlp_exporter(cfg: TracingConfig) -> SpanExporter:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter(endpoint=cfg.otlp_endpoint or None, headers=dict(cfg.otlp_headers) or None)


def _remote(parsed: tuple[str, str, str], tracestate: str | None) -> Context:
    """The client's span as a remote parent context."""
    trace_id, span_id, flags = parsed
    state = TraceState.from_header([tracestate]) if tracestate else None
    sc = SpanContext(int(trace_id, 16), int(span_id, 16), is_remote=True, trace_flags=TraceFlags(int(flags, 16)),
                     trace_state=state)
    return set_span_in_context(NonRecordingSpan(sc), _ROOT)


def _attach_target(attrs: dict[str, Any], method: str, params: Mapping[str, Any]) -> str | None:
    """Add the request's tool/prompt name or resource URI to `attrs`; the span-name target (tool or prompt)."""
    key = _TARGET.get(method)
    if key is not None:
        if method == "tools/call":
            attrs["gen_ai.operation.name"] = "execute_tool"
        name = params.get("name")
        if isinstance(name, str):
            attrs[key] = name
            return name
        return None
    if method in _URI_METHODS:
        uri = params.get("uri")
        if isinstance(uri, str):
            attrs["mcp.resource.uri"] = uri
    return None
