"""Trace propagation to a real upstream, and OTLP export to a real (in-test) OTLP/HTTP collector.

The upstream (`tests/fixtures/trace_server.py`, official `mcp` SDK) records the `traceparent` it received
as an HTTP header and in `params._meta`. Clients are the official SDK in both eras; they send their trace
context as HTTP headers or in `_meta`. The upstream must see the client's trace id with Stile's hop as the
parent, with tracing disabled (W3C propagation only) and enabled (the parent is Stile's upstream CLIENT span,
exported with its SERVER parent to the collector).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import aiohttp
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.types import TextContent
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from stile.observe.tracing import parse_traceparent
from tests.support import ready_process, stile_server

MODES = ["legacy", "2026-07-28"]


@dataclass
class Exported:
    service: str
    span: Span

    def attrs(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for kv in self.span.attributes:
            out[kv.key] = getattr(kv.value, kv.value.WhichOneof("value") or "string_value")
        return out


class Collector:
    """A minimal OTLP/HTTP (protobuf) trace receiver on 127.0.0.1, in a thread (Stile exports while we block)."""

    def __init__(self) -> None:
        self.spans: list[Exported] = []
        self.cond = threading.Condition()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                req = ExportTraceServiceRequest.FromString(body)
                got = []
                for rs in req.resource_spans:
                    service = next((kv.value.string_value for kv in rs.resource.attributes
                                    if kv.key == "service.name"), "")
                    got += [Exported(service, s) for ss in rs.scope_spans for s in ss.spans]
                with collector.cond:
                    collector.spans += got
                    collector.cond.notify_all()
                out = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def wait_for(self, pred: Callable[[list[Exported]], list[Exported]], deadline_s: float = 30.0) -> list[Exported]:
        """The spans `pred` picks once it picks any (waiting on exports, with a deadline)."""
        end = time.monotonic() + deadline_s
        with self.cond:
            while not (found := pred(self.spans)):
                remaining = end - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"no matching spans within {deadline_s}s; got {len(self.spans)} spans")
                self.cond.wait(remaining)
            return found

    def trace(self, trace_id: str, count: int, root: str = "") -> Callable[[list[Exported]], list[Exported]]:
        """At least `count` spans of the trace: those of the SERVER span named `root` (and its children) if given."""
        def pick(spans: list[Exported]) -> list[Exported]:
            mine = [s for s in spans if s.span.trace_id.hex() == trace_id]
            if root:
                top = {s.span.span_id for s in mine if s.span.kind == Span.SPAN_KIND_SERVER and s.span.name == root}
                mine = [s for s in mine if s.span.span_id in top or s.span.parent_span_id in top]
            return mine if len(mine) >= count else []

        return pick


@pytest.fixture(scope="module")
def collector() -> Iterator[Collector]:
    c = Collector()
    c.thread.start()
    try:
        yield c
    finally:
        c.server.shutdown()
        c.server.server_close()


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    argv = [sys.executable, "-u", "-m", "tests.fixtures.trace_server", "--port", "0"]
    with ready_process(argv, "trace upstream") as port:
        yield f"http://127.0.0.1:{port}"


def config(upstream: str, tracing: dict[str, Any] | None = None) -> dict[str, Any]:
    cfg: dict[str, Any] = {"upstreams": {"tr": {"url": f"{upstream}/mcp"}}, "virtual_servers": {"v": {"auth": "none"}}}
    if tracing is not None:
        cfg["tracing"] = tracing
    return cfg


@pytest.fixture(scope="module")
def plain(upstream: str) -> Iterator[str]:
    with stile_server(config(upstream)) as url:
        yield url


@pytest.fixture(scope="module")
def traced(upstream: str, collector: Collector) -> Iterator[str]:
    tracing = {"enabled": True, "otlp_endpoint": collector.url, "service_name": "stile-e2e"}
    with stile_server(config(upstream, tracing), env={"OTEL_BSP_SCHEDULE_DELAY": "50"}) as url:
        yield url


async def seen_by_upstream(upstream: str, text: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http, http.get(f"{upstream}/seen") as resp:
        assert resp.status == 200
        seen: list[dict[str, Any]] = await resp.json()
    hits = [s for s in seen if s["method"] == "tools/call" and s["text"] == text]
    assert len(hits) == 1, seen
    return hits[0]


async def call_with_trace(base: str, mode: str, carrier: str, text: str, traceparent: str) -> None:
    """One `tools/call` through Stile by the official SDK client, its trace context in headers or `_meta`."""
    context = {"traceparent": traceparent, "tracestate": "client=1"}
    async with (httpx2.AsyncClient(headers=context if carrier == "header" else None) as http,
                Client(streamable_http_client(f"{base}/mcp/v", http_client=http), mode=mode) as client):
        result = await client.call_tool("tr__echo", {"text": text},
                                        meta=context if carrier == "meta" else None)  # type: ignore[arg-type]
    block = result.content[0]
    assert isinstance(block, TextContent) and block.text == text


def check_hop(seen: dict[str, Any], trace_id: str, client_span: str) -> str:
    """The upstream got the client's trace, a parent that is Stile's (not the client's), header and `_meta` alike."""
    assert seen["header_traceparent"] == seen["meta_traceparent"], seen
    parsed = parse_traceparent(seen["header_traceparent"])
    assert parsed is not None, seen
    got_trace, parent, flags = parsed
    assert (got_trace, flags) == (trace_id, "01")
    assert parent != client_span
    assert seen["header_tracestate"] == seen["meta_tracestate"] == "client=1"
    return parent


@pytest.mark.parametrize("carrier", ["header", "meta"])
@pytest.mark.parametrize("mode", MODES)
async def test_the_upstream_continues_the_clients_trace(plain: str, upstream: str, mode: str, carrier: str) -> None:
    trace_id, client_span = os.urandom(16).hex(), os.urandom(8).hex()
    text = f"plain {mode} {carrier} {trace_id}"
    await call_with_trace(plain, mode, carrier, text, f"00-{trace_id}-{client_span}-01")
    check_hop(await seen_by_upstream(upstream, text), trace_id, client_span)


@pytest.mark.parametrize("carrier", ["header", "meta"])
@pytest.mark.parametrize("mode", MODES)
async def test_spans_are_exported_and_the_upstream_hangs_under_the_client_span(
        traced: str, upstream: str, collector: Collector, mode: str, carrier: str) -> None:
    trace_id, client_span = os.urandom(16).hex(), os.urandom(8).hex()
    text = f"traced {mode} {carrier} {trace_id}"
    await call_with_trace(traced, mode, carrier, text, f"00-{trace_id}-{client_span}-01")
    parent = check_hop(await seen_by_upstream(upstream, text), trace_id, client_span)

    spans = collector.wait_for(collector.trace(trace_id, 3, root="tools/call tr__echo"))
    by_kind = {s.span.kind: s for s in spans}
    assert len(by_kind) == len(spans) == 3, [s.span.name for s in spans]
    server, stage, up = by_kind[Span.SPAN_KIND_SERVER], by_kind[Span.SPAN_KIND_INTERNAL], by_kind[Span.SPAN_KIND_CLIENT]
    assert {s.service for s in spans} == {"stile-e2e"}
    assert server.span.parent_span_id.hex() == client_span
    assert stage.span.parent_span_id == server.span.span_id == up.span.parent_span_id
    assert up.span.span_id.hex() == parent  # the upstream's parent is Stile's upstream CLIENT span
    assert server.span.name == "tools/call tr__echo" and up.span.name == "tools/call echo"
    attrs = server.attrs()
    assert attrs["mcp.method.name"] == "tools/call"
    assert attrs["gen_ai.operation.name"] == "execute_tool" and attrs["gen_ai.tool.name"] == "tr__echo"
    assert attrs["mcp.protocol.version"] == ("2025-11-25" if mode == "legacy" else mode)
    assert attrs["stile.virtual_server"] == "v" and attrs["stile.upstream"] == "tr" and attrs["stile.outcome"] == "ok"
    assert "jsonrpc.request.id" in attrs
    assert ("mcp.session.id" in attrs) == (mode == "legacy")
    assert up.attrs()["gen_ai.tool.name"] == "echo" and up.attrs()["stile.upstream"] == "tr"
    assert server.span.status.code == Status.STATUS_CODE_UNSET


async def test_an_unknown_tool_is_an_error_span(traced: str, collector: Collector) -> None:
    trace_id = os.urandom(16).hex()
    async with (httpx2.AsyncClient(headers={"traceparent": f"00-{trace_id}-{os.urandom(8).hex()}-01"}) as http,
                Client(streamable_http_client(f"{traced}/mcp/v", http_client=http), mode=MODES[1]) as client):
        with pytest.raises(Exception, match="Unknown tool"):
            await client.call_tool("nope", {})
    spans = collector.wait_for(collector.trace(trace_id, 2, root="tools/call nope"))
    server = next(s for s in spans if s.span.kind == Span.SPAN_KIND_SERVER)
    assert server.span.status.code == Status.STATUS_CODE_ERROR
    assert server.attrs()["stile.outcome"] == "error" and server.attrs()["error.type"].lstrip("-").isdigit()
    assert not any(s.span.kind == Span.SPAN_KIND_CLIENT for s in spans)


async def test_stopping_stile_flushes_the_last_spans(upstream: str, collector: Collector) -> None:
    """Spans still batched when Stile is told to stop reach the collector (`Gateway.stop` awaits `tracing.aclose()`:
    the atexit flush never runs, as uvicorn re-raises SIGTERM once it has shut down)."""
    tracing = {"enabled": True, "otlp_endpoint": collector.url}
    trace_id = os.urandom(16).hex()
    with stile_server(config(upstream, tracing), env={"OTEL_BSP_SCHEDULE_DELAY": "600000"}) as base:
        await call_with_trace(base, MODES[1], "meta", f"flush {trace_id}", f"00-{trace_id}-{os.urandom(8).hex()}-01")
        assert not collector.trace(trace_id, 1)(collector.spans)  # held in the batch until shutdown
    # sent before the process exited
    spans = collector.wait_for(collector.trace(trace_id, 3, root="tools/call tr__echo"), deadline_s=5.0)
    assert {s.service for s in spans} == {"stile"}
