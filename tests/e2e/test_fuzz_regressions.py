"""Every input the front-door fuzzer (bench/fuzz_frontdoor.py) or an adversarial run ever found, over raw sockets.

Each one used to end in a 500, a -32603 or a traceback in the gateway's log; each now gets a clear
4xx/-326xx answer and leaves the log clean. Add new finds here as raw request bytes.
"""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from bench.fuzz_target import (
    META,
    MODERN,
    Answer,
    FuzzTarget,
    SseStream,
    exchange,
    liveness_problems,
    log_problems,
    request,
)

JSON_HEADERS = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}


@pytest.fixture(scope="module")
def target() -> Iterator[FuzzTarget]:
    with FuzzTarget() as t:
        yield t


@pytest.fixture(autouse=True)
def clean_log(target: FuzzTarget) -> Iterator[None]:
    """Every case leaves no traceback in the log, and the gateway keeps serving."""
    target.new_log()
    yield
    assert log_problems(target.new_log()) == []
    assert liveness_problems(target) == []


def post(target: FuzzTarget, path: str, body: Any, headers: dict[str, str] | None = None) -> Answer:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return exchange(target.port, request("POST", path, {**JSON_HEADERS, **(headers or {})}, data))


def modern(method: str, params: dict[str, Any]) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": 7, "method": method, "params": {**params, "_meta": META}}


def legacy_session(target: FuzzTarget, version: str = "2025-11-25") -> str:
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": version, "capabilities": {}, "clientInfo": {"name": "fuzz", "version": "0"}}}
    ans = post(target, "/mcp/open", init)
    sid = ans.header("mcp-session-id")
    assert ans.status == 200 and sid, ans
    return sid


# --- Origin that urlsplit cannot parse -------------------------------------------------------------------


@pytest.mark.parametrize("origin", ["http://[", "http://[::1", "http://[zz]", "http://a]b"])
@pytest.mark.parametrize(("method", "path"), [("POST", "/mcp/open"), ("GET", "/sse/open"),
                                              ("POST", "/sse/open/messages"), ("GET", "/admin/audit"),
                                              ("POST", "/mcp/keyed")])
def test_unparsable_origin_is_403(target: FuzzTarget, origin: str, method: str, path: str) -> None:
    ans = exchange(target.port, request(method, path, {**JSON_HEADERS, "Origin": origin}, b"{}"))
    assert ans.status == 403, ans
    assert b"Invalid Origin" in ans.body


# --- legacy notifications/cancelled with an unhashable requestId -----------------------------------------


@pytest.mark.parametrize("rid", [[1], {"a": 1}, [], {}])
def test_legacy_cancel_with_unhashable_request_id_is_accepted(target: FuzzTarget, rid: Any) -> None:
    sid = legacy_session(target)
    note = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": rid}}
    ans = post(target, "/mcp/open", note, {"Mcp-Session-Id": sid, "MCP-Protocol-Version": "2025-11-25"})
    assert ans.status == 202, ans


# --- completion/complete with a non-string ref.name / ref.uri --------------------------------------------

BAD_REFS = [{"type": "ref/prompt", "name": ["notes__summarize"]}, {"type": "ref/prompt", "name": {"a": 1}},
            {"type": "ref/resource", "uri": ["notes://note/{note_id}"]}, {"type": "ref/resource", "uri": {"x": 1}}]
COMPLETE_ARGS = {"argument": {"name": "style", "value": "s"}}


@pytest.mark.parametrize("ref", BAD_REFS)
def test_complete_with_non_string_ref_is_invalid_params_modern(target: FuzzTarget, ref: dict[str, Any]) -> None:
    ans = post(target, "/mcp/open", modern("completion/complete", {"ref": ref, **COMPLETE_ARGS}),
               {"MCP-Protocol-Version": MODERN, "Mcp-Method": "completion/complete"})
    assert ans.status < 500 and ans.jsonrpc_codes() == [-32602], ans


@pytest.mark.parametrize("ref", BAD_REFS)
def test_complete_with_non_string_ref_in_a_2025_03_26_batch(target: FuzzTarget, ref: dict[str, Any]) -> None:
    sid = legacy_session(target, "2025-03-26")
    batch = [{"jsonrpc": "2.0", "id": 3, "method": "completion/complete", "params": {"ref": ref, **COMPLETE_ARGS}}]
    ans = post(target, "/mcp/open", batch, {"Mcp-Session-Id": sid})
    assert ans.status == 200 and ans.jsonrpc_codes() == [-32602], ans


@pytest.mark.parametrize("ref", BAD_REFS)
def test_complete_with_non_string_ref_on_legacy_sse(target: FuzzTarget, ref: dict[str, Any]) -> None:
    stream = SseStream(target.port)
    try:
        msg = {"jsonrpc": "2.0", "id": 9, "method": "completion/complete", "params": {"ref": ref, **COMPLETE_ARGS}}
        assert post(target, stream.messages, msg).status == 202
        event = stream.next_event(b'"id":9')
        assert b'"code":-32602' in event, event
    finally:
        stream.close()


# --- legacy SSE clients that go away ---------------------------------------------------------------------


def test_sse_message_client_disconnects_mid_body(target: FuzzTarget) -> None:
    stream = SseStream(target.port)
    try:
        partial = request("POST", stream.messages, {**JSON_HEADERS, "Content-Length": "400"}, b'{"jsonrpc":"2.0",')
        exchange(target.port, partial, hang_up=True)
        ans = post(target, stream.messages, {"jsonrpc": "2.0", "id": 5, "method": "ping"})
        assert ans.status == 202
        assert b'"id":5' in stream.next_event(b'"id":5')
    finally:
        stream.close()


def test_sse_stream_closed_with_a_request_pipelined_behind_it(target: FuzzTarget) -> None:
    pipelined = (request("GET", "/sse/open", {"Accept": "text/event-stream"}, length=False)
                 + request("POST", "/mcp/open", JSON_HEADERS, b'{"jsonrpc":"2.0","id":1,"method":"ping"}'))
    for _ in range(5):
        exchange(target.port, pipelined, hang_up=True)
    stream = SseStream(target.port)  # and the next stream still works
    stream.close()


def test_sse_stream_closed_while_answers_are_queued(target: FuzzTarget) -> None:
    stream = SseStream(target.port)
    for rid in range(20):
        post(target, stream.messages, {"jsonrpc": "2.0", "id": rid, "method": "tools/list"})
    stream.close()


# --- admin API parameters ---------------------------------------------------------------------------------


@pytest.mark.parametrize("query", ["limit=%C2%B2", "limit=%D9%A3", "limit=+5", "limit=0x10",
                                   "since=99999999999d", "since=1e400", "since=nan", "until=-inf",
                                   "since=%D9%A3h", "since=99999999999999999999w", "since=" + "9" * 400])
def test_admin_bad_numbers_are_400_naming_the_parameter(target: FuzzTarget, query: str) -> None:
    ans = exchange(target.port, request("GET", f"/admin/audit?{query}", {"X-API-Key": target.key}))
    assert ans.status == 400, ans
    assert json.loads(ans.body)["parameter"] == query.split("=")[0]


def test_admin_usage_bad_since_is_400(target: FuzzTarget) -> None:
    ans = exchange(target.port, request("GET", "/admin/usage?since=99999999999d", {"X-API-Key": target.key}))
    assert ans.status == 400 and json.loads(ans.body)["parameter"] == "since", ans


# --- Host header: validated, never copied raw into a challenge ------------------------------------------


@pytest.mark.parametrize("host", ['127.0.0.1:1"x="y', '127.0.0.1", error="forged', "127.0.0.1:1\\", "a b",
                                  "127.0.0.1:99999999", "127.0.0.1:", "[::1", "127.0.0.1/x", "127.0.0.1?q", "@"])
@pytest.mark.parametrize("path", ["/mcp/keyed", "/mcp/open", "/sse/keyed", "/admin/audit",
                                  "/.well-known/oauth-protected-resource/mcp/keyed"])
def test_malformed_host_is_refused_before_any_url_is_built(target: FuzzTarget, host: str, path: str) -> None:
    ans = exchange(target.port, request("POST" if path.startswith("/mcp") else "GET", path,
                                        {**JSON_HEADERS, "Host": host}, b"{}"))
    assert ans.status in (400, 421), ans
    assert ans.header("www-authenticate") is None
    assert host.encode() not in ans.body


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.1:8080", "localhost:1", "[::1]:443", "[::1]"])
def test_well_formed_host_gets_a_clean_challenge(target: FuzzTarget, host: str) -> None:
    ans = exchange(target.port, request("POST", "/mcp/keyed", {**JSON_HEADERS, "Host": host}, b"{}"))
    assert ans.status == 401, ans
    challenge = ans.header("www-authenticate")
    assert challenge == f'Bearer resource_metadata="http://{host}/.well-known/oauth-protected-resource/mcp/keyed"'


def test_sse_client_that_stops_reading_gets_429_not_a_log_flood(target: FuzzTarget) -> None:
    """Answers queue for a stream nobody reads: past the queue's bound new messages are refused (429)."""
    stream = SseStream(target.port)
    stream.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    statuses: dict[int, int] = {}
    try:
        with socket.create_connection(("127.0.0.1", target.port), timeout=5) as conn:
            req = request("POST", stream.messages, JSON_HEADERS, b'{"jsonrpc":"2.0","id":1,"method":"tools/list"}')
            buf = b""
            for _ in range(40_000):  # until the stream's queue (4096) and the socket buffers are full
                conn.sendall(req)
                while b"\r\n\r\n" not in buf:
                    buf += conn.recv(65536)
                head, _, buf = buf.partition(b"\r\n\r\n")
                length = int(re.search(rb"content-length: (\d+)", head.lower()).group(1))  # type: ignore[union-attr]
                while len(buf) < length:
                    buf += conn.recv(65536)
                buf = buf[length:]
                status = int(head.split(b" ", 2)[1])
                statuses[status] = statuses.get(status, 0) + 1
                if statuses.get(429, 0) >= 20:
                    break
    finally:
        stream.close()
    assert set(statuses) == {202, 429}, statuses
