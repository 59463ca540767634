"""Trace context and spans: traceparent parsing, where the client's context comes from, and the spans
recorded (captured with the SDK's in-memory exporter) with their MCP semantic-convention attributes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from stile.config.observe import TracingConfig
from stile.core.context import CallContext, Principal
from stile.observe.tracing import Tracing, parse_traceparent, valid_tracestate
from stile.wire.errors import StileError

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
SAMPLED = f"00-{TRACE}-{PARENT}-01"
UNSAMPLED = f"00-{TRACE}-{PARENT}-00"
META_TRACE = "0af7651916cd43dd8448eb211c80319c"
META_TP = f"00-{META_TRACE}-b7ad6b7169203331-01"


@pytest.mark.parametrize(("value", "expected"), [
    (SAMPLED, (TRACE, PARENT, "01")),
    (UNSAMPLED, (TRACE, PARENT, "00")),
    (f"  {SAMPLED} ", (TRACE, PARENT, "01")),  # optional whitespace around a header value
    (f"01-{TRACE}-{PARENT}-01", (TRACE, PARENT, "01")),  # a future version is read as version 00
    (f"cc-{TRACE}-{PARENT}-01-what-the-future-holds", (TRACE, PARENT, "01")),  # ... and may carry more fields
    (f"00-{TRACE}-{PARENT}-01-extra", None),  # version 00 has exactly four fields
    (f"ff-{TRACE}-{PARENT}-01", None),  # version ff is forbidden
    (f"0-{TRACE}-{PARENT}-01", None),
    (f"00-{'0' * 32}-{PARENT}-01", None),  # all-zero trace id
    (f"00-{TRACE}-{'0' * 16}-01", None),  # all-zero parent id
    (f"00-{TRACE.upper()}-{PARENT}-01", None),  # uppercase hex is invalid
    (f"00-{TRACE}-{PARENT.upper()}-01", None),
    (f"00-{TRACE}-{PARENT}-0G", None),
    (f"00-{TRACE[:-1]}-{PARENT}-01", None),
    (f"00_{TRACE}_{PARENT}_01", None),
    (f"{SAMPLED}\r\nX-Injected: 1", None),  # CR/LF never pass
    (f"{SAMPLED}\n", None),
    (f"01-{TRACE}-{PARENT}-01-\u2603", None),  # a future version's extra fields are printable ASCII
    (f"01-{TRACE}-{PARENT}-01-" + "a" * 300, None),  # length cap
    ("", None),
    (None, None),
    (42, None),
])
def test_parse_traceparent(value: Any, expected: tuple[str, str, str] | None) -> None:
    assert parse_traceparent(value) == expected


@pytest.mark.parametrize(("value", "expected"), [
    ("rojo=00f067aa0ba902b7", "rojo=00f067aa0ba902b7"),
    ("rojo=00f067aa0ba902b7, congo=t61rcWkgMzE", "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"),
    ("tenant@vendor=x,, b=y z", "tenant@vendor=x,b=y z"),  # empty members dropped; inner spaces allowed
    ("", None),
    ("a=b\r\nX-Injected: 1", None),
    ("a=b\n", None),
    ("a=caf\u00e9", None),
    ("a=\u2603", None),
    ("Upper=x", None),  # keys are lower case
    ("a=b=c", None),
    ("a=", None),
    ("a=b " + ",c=d" * 0, "a=b"),  # trailing whitespace of a member is OWS
    (",".join(f"k{i}=v" for i in range(33)), None),  # at most 32 members
    ("a=" + "x" * 600, None),
    (None, None),
    (7, None),
])
def test_valid_tracestate(value: Any, expected: str | None) -> None:
    assert valid_tracestate(value) == expected


def request(method: str = "tools/call", params: dict[str, Any] | None = None, headers: dict[str, str] | None = None,
            **kw: Any) -> CallContext:
    return CallContext("vs", method, params if params is not None else {"name": "notes__list", "arguments": {}},
                       7, "modern", "2026-07-28", headers=headers or {}, **kw)


def hop(tp: str | None) -> tuple[str, str, str]:
    parsed = parse_traceparent(tp)
    assert parsed is not None, tp
    return parsed


# --- propagation (disabled: W3C context only) ----------------------------------------------------------------


@pytest.fixture
def plain() -> Tracing:
    return Tracing(TracingConfig())


def test_client_context_from_headers_beats_meta(plain: Tracing) -> None:
    ctx = request(params={"name": "t", "_meta": {"traceparent": META_TP, "tracestate": "m=1"}},
                  headers={"traceparent": SAMPLED, "tracestate": "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"})
    plain.begin(ctx)
    trace_id, span_id, flags = hop(ctx.stats.traceparent)
    assert (ctx.stats.trace_id, trace_id, flags) == (TRACE, TRACE, "01")
    assert span_id != PARENT  # Stile's own hop
    assert Tracing.upstream_headers(ctx) == {"traceparent": ctx.stats.traceparent,
                                             "tracestate": "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"}


def test_client_context_from_meta(plain: Tracing) -> None:
    ctx = request(params={"name": "t", "_meta": {"traceparent": META_TP, "tracestate": "m=1"}})
    plain.begin(ctx)
    assert ctx.stats.trace_id == META_TRACE
    assert ctx.stats.tracestate == "m=1"


def test_invalid_or_missing_context_starts_a_new_trace_and_drops_tracestate(plain: Tracing) -> None:
    for headers in ({"traceparent": f"ff-{TRACE}-{PARENT}-01", "tracestate": "a=1"}, {}):
        ctx = request(headers=headers)
        plain.begin(ctx)
        trace_id, _, flags = hop(ctx.stats.traceparent)
        assert trace_id != TRACE and trace_id == ctx.stats.trace_id and flags == "01"
        assert ctx.stats.tracestate is None
        assert Tracing.upstream_headers(ctx) == {"traceparent": ctx.stats.traceparent}


def test_unsampled_flag_and_oversized_tracestate(plain: Tracing) -> None:
    ctx = request(headers={"traceparent": UNSAMPLED, "tracestate": "x=" + "a" * 600})
    plain.begin(ctx)
    assert hop(ctx.stats.traceparent)[2] == "00"
    assert ctx.stats.tracestate is None
    assert ctx.stats.span is None
    plain.end(ctx, "ok")  # nothing to end


# --- spans (enabled) -------------------------------------------------------------------------------------


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def tracing(exporter: InMemorySpanExporter) -> Iterator[Tracing]:
    t = Tracing(TracingConfig(enabled=True, service_name="stile-test"), exporter=exporter)
    yield t
    t.shutdown()


def finished(tracing: Tracing, exporter: InMemorySpanExporter) -> dict[str, ReadableSpan]:
    assert tracing.force_flush()
    spans = exporter.get_finished_spans()
    by_kind = {str(s.kind.name): s for s in spans}
    assert len(by_kind) == len(spans)
    return by_kind


def run(tracing: Tracing, ctx: CallContext, upstream_params: dict[str, Any], reply: dict[str, Any] | None,
        exc: BaseException | None = None) -> dict[str, str]:
    """What Observe and Router.forward do around one upstream call; the headers the upstream was sent."""
    tracing.begin(ctx)
    span = tracing.start_upstream(ctx, "notes", upstream_params) if tracing.spans else None
    headers = Tracing.upstream_headers(ctx, span)
    if span is not None:
        Tracing.end_upstream(span, reply, exc)
    return headers


def test_server_stage_and_client_spans_continue_the_clients_trace(tracing: Tracing,
                                                                  exporter: InMemorySpanExporter) -> None:
    ctx = request(headers={"traceparent": SAMPLED, "tracestate": "rojo=1"}, session_id="nonce-1",
                  principal=Principal(agent="bot", user="alice", method="api_key"))
    sent = run(tracing, ctx, {"name": "list", "arguments": {}}, {"result": {"content": []}})
    tracing.end(ctx, "ok", upstream="notes")
    spans = finished(tracing, exporter)
    server, stage, client = spans["SERVER"], spans["INTERNAL"], spans["CLIENT"]
    assert server.context is not None and client.context is not None and stage.context is not None
    assert {s.context.trace_id for s in (server, stage, client)} == {int(TRACE, 16)}
    assert server.parent is not None and server.parent.span_id == int(PARENT, 16) and server.parent.is_remote
    assert stage.parent is not None and stage.parent.span_id == server.context.span_id
    assert client.parent is not None and client.parent.span_id == server.context.span_id
    # the upstream's parent is the CLIENT span; Stile's hop (what audit/metrics see) is the SERVER span
    assert sent == {"traceparent": f"00-{TRACE}-{client.context.span_id:016x}-01", "tracestate": "rojo=1"}
    assert ctx.stats.traceparent == f"00-{TRACE}-{server.context.span_id:016x}-01"
    assert ctx.stats.trace_id == TRACE and ctx.stats.span is None
    assert str(server.context.trace_state.to_header()) == "rojo=1"
    assert server.name == "tools/call notes__list" and client.name == "tools/call list"
    assert stage.name == "stile policies"
    assert dict(server.attributes or {}) == {
        "mcp.method.name": "tools/call", "mcp.protocol.version": "2026-07-28", "stile.virtual_server": "vs",
        "gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "notes__list", "jsonrpc.request.id": "7",
        "mcp.session.id": "nonce-1", "stile.agent": "bot", "stile.outcome": "ok", "stile.upstream": "notes",
    }
    assert dict(client.attributes or {}) == {"mcp.method.name": "tools/call", "stile.upstream": "notes",
                                             "gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "list"}
    assert server.status.status_code is StatusCode.UNSET and client.status.status_code is StatusCode.UNSET
    assert server.resource.attributes["service.name"] == "stile-test"
    assert stage.end_time is not None and client.start_time is not None and stage.end_time <= client.start_time


def test_resource_and_prompt_attributes(tracing: Tracing, exporter: InMemorySpanExporter) -> None:
    read = request("resources/read", {"uri": "notes+note://1"})
    run(tracing, read, {"uri": "note://1"}, {"result": {"contents": []}})
    tracing.end(read, "ok", upstream="notes")
    spans = finished(tracing, exporter)
    assert spans["SERVER"].name == "resources/read"  # URIs stay out of span names (cardinality)
    assert (spans["SERVER"].attributes or {})["mcp.resource.uri"] == "notes+note://1"
    assert (spans["CLIENT"].attributes or {})["mcp.resource.uri"] == "note://1"
    exporter.clear()
    prompt = request("prompts/get", {"name": "notes__summary"})
    run(tracing, prompt, {"name": "summary"}, {"result": {"messages": []}})
    tracing.end(prompt, "ok")
    spans = finished(tracing, exporter)
    assert spans["SERVER"].name == "prompts/get notes__summary"
    assert (spans["SERVER"].attributes or {})["gen_ai.prompt.name"] == "notes__summary"
    assert "gen_ai.operation.name" not in (spans["SERVER"].attributes or {})


def test_errors_set_error_type_and_status(tracing: Tracing, exporter: InMemorySpanExporter) -> None:
    ctx = request()
    run(tracing, ctx, {"name": "list"}, {"error": {"code": -32602, "message": "bad arguments"}})
    tracing.end(ctx, "error", "upstream", -32602, "bad arguments", "notes")
    spans = finished(tracing, exporter)
    for kind in ("SERVER", "CLIENT"):
        attrs = spans[kind].attributes or {}
        assert attrs["error.type"] == "-32602" and attrs["rpc.response.status_code"] == "-32602"
        assert spans[kind].status.status_code is StatusCode.ERROR
        assert spans[kind].status.description == "bad arguments"
    assert (spans["SERVER"].attributes or {})["stile.error"] == "upstream"
    assert spans["INTERNAL"].status.status_code is StatusCode.UNSET  # the policies let it through

    exporter.clear()
    ctx = request()
    run(tracing, ctx, {"name": "list"}, {"result": {"content": [], "isError": True}})
    tracing.end(ctx, "is_error", upstream="notes")
    spans = finished(tracing, exporter)
    for kind in ("SERVER", "CLIENT"):
        assert (spans[kind].attributes or {})["error.type"] == "tool_error"
        assert spans[kind].status.status_code is StatusCode.ERROR

    exporter.clear()
    ctx = request()
    run(tracing, ctx, {"name": "list"}, None, StileError("upstream 'notes' timed out"))
    tracing.end(ctx, "error", "StileError", -32603, "upstream 'notes' timed out", "notes")
    client = finished(tracing, exporter)["CLIENT"]
    assert (client.attributes or {})["error.type"] == "StileError"
    assert client.status.description == "upstream 'notes' timed out"


def test_a_denied_request_has_no_upstream_span_and_an_errored_stage(tracing: Tracing,
                                                                    exporter: InMemorySpanExporter) -> None:
    ctx = request()
    tracing.begin(ctx)
    tracing.end(ctx, "denied", "PolicyDenied", -32003, "no-delete: deletes need approval")
    spans = finished(tracing, exporter)
    assert set(spans) == {"SERVER", "INTERNAL"}
    assert spans["SERVER"].status.status_code is StatusCode.ERROR
    assert spans["SERVER"].status.description == "no-delete: deletes need approval"
    assert (spans["SERVER"].attributes or {})["error.type"] == "-32003"
    assert (spans["SERVER"].attributes or {})["stile.outcome"] == "denied"
    assert spans["INTERNAL"].status.status_code is StatusCode.ERROR


def test_a_request_without_client_context_is_a_new_root(tracing: Tracing, exporter: InMemorySpanExporter) -> None:
    ctx = request(method="tools/list", params={})
    tracing.begin(ctx)
    tracing.end(ctx, "ok")
    server = finished(tracing, exporter)["SERVER"]
    assert server.parent is None and server.name == "tools/list" and server.context is not None
    assert ctx.stats.trace_id == f"{server.context.trace_id:032x}"


@pytest.mark.parametrize("traceparent", [UNSAMPLED, None])
def test_unsampled_requests_record_nothing_but_still_propagate(exporter: InMemorySpanExporter,
                                                               traceparent: str | None) -> None:
    tracing = Tracing(TracingConfig(enabled=True, sample_ratio=0.0), exporter=exporter)
    try:
        ctx = request(headers={"traceparent": traceparent} if traceparent else {})
        sent = run(tracing, ctx, {"name": "list"}, {"result": {}})
        tracing.end(ctx, "ok")
        assert tracing.force_flush()
        assert exporter.get_finished_spans() == ()
        trace_id, span_id, flags = hop(sent["traceparent"])
        assert flags == "00" and span_id != PARENT and sent["traceparent"] == ctx.stats.traceparent
        if traceparent is not None:
            assert trace_id == TRACE
    finally:
        tracing.shutdown()


def test_a_sampled_parent_is_honoured_at_ratio_zero(exporter: InMemorySpanExporter) -> None:
    tracing = Tracing(TracingConfig(enabled=True, sample_ratio=0.0), exporter=exporter)
    try:
        ctx = request(headers={"traceparent": SAMPLED})
        run(tracing, ctx, {"name": "list"}, {"result": {}})
        tracing.end(ctx, "ok")
        assert set(finished(tracing, exporter)) == {"SERVER", "INTERNAL", "CLIENT"}
    finally:
        tracing.shutdown()


async def test_shutdown_flushes_and_later_requests_only_propagate(exporter: InMemorySpanExporter) -> None:
    tracing = Tracing(TracingConfig(enabled=True), exporter=exporter)
    ctx = request()
    tracing.begin(ctx)
    tracing.end(ctx, "ok")
    await tracing.aclose()
    assert len(exporter.get_finished_spans()) == 2
    tracing.shutdown()  # idempotent
    late = request()
    tracing.begin(late)
    assert late.stats.span is None and hop(late.stats.traceparent)
    assert tracing.start_upstream(late, "notes", {}) is None and not tracing.spans
