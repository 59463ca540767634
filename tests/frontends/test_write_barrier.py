"""One write per reply (`stile.barrier` + the protocol's `Outbox`): the bytes on the wire are exactly uvicorn's,
and no reply leaves before the audit records staged in its loop tick are in the write-ahead log."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
import uvicorn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from stile.barrier import BARRIER, WriteBarrier
from stile.core.context import CallContext
from stile.frontends.protocol import Outbox, guarded_protocol
from stile.observe.audit import AuditLog, Outcome
from tests.observe.test_spool import FakeSink


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers as the query string says: status, body size, chunks, with or without content-length."""
    if scope["type"] != "http":
        return
    q = {k: int(v[0]) for k, v in parse_qs(scope["query_string"].decode()).items()}
    while (await receive()).get("more_body"):
        pass
    size, chunks = q.get("size", 0), max(1, q.get("chunks", 1))
    body = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    headers = [(b"content-type", b"application/octet-stream")]
    if q.get("cl", 1):
        headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": q.get("status", 200), "headers": headers})
    step = max(1, len(body) // chunks)
    parts = [body[i:i + step] for i in range(0, len(body), step)] or [b""]
    for i, part in enumerate(parts):
        if q.get("yield", 0):
            await asyncio.sleep(0)  # the next part in a later tick
        await send({"type": "http.response.body", "body": part, "more_body": i + 1 < len(parts)})


class Served:
    def __init__(self, protocol: type[HttpToolsProtocol]) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        config = uvicorn.Config(app, http=protocol, lifespan="off", loop="uvloop", log_level="warning",
                                date_header=False, server_header=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> Served:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "server did not start"
            self.thread.join(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()

    def exchange(self, data: bytes) -> bytes:
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
            s.sendall(data)
            out = []
            while chunk := s.recv(65536):
                out.append(chunk)
            return b"".join(out)


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[Served, Served]]:
    with Served(HttpToolsProtocol) as plain, Served(guarded_protocol(10.0, 65536, 10.0, 1000)) as guarded:
        yield plain, guarded


request = st.fixed_dictionaries({
    "status": st.sampled_from([200, 201, 204, 400, 404, 500]),
    "size": st.integers(0, 70_000),
    "chunks": st.integers(1, 5),
    "cl": st.sampled_from([0, 1]),
    "yield": st.sampled_from([0, 1]),
    "method": st.sampled_from(["GET", "POST", "HEAD"]),
})


def _wire(reqs: list[dict[str, Any]]) -> bytes:
    out = b""
    for i, r in enumerate(reqs):
        cl = 1 if r["status"] == 204 else r["cl"]  # a 204 carries no body: uvicorn refuses chunked framing there
        size = 0 if r["status"] == 204 else r["size"]
        query = f"status={r['status']}&size={size}&chunks={r['chunks']}&cl={cl}&yield={r['yield']}"
        body = b"{}" if r["method"] == "POST" else b""
        last = b"Connection: close\r\n" if i + 1 == len(reqs) else b""
        out += (f"{r['method']} /r?{query} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\n"
                .encode() + last + b"\r\n" + body)
    return out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(reqs=st.lists(request, min_size=1, max_size=4))
def test_the_bytes_on_the_wire_are_uvicorns(servers: tuple[Served, Served], reqs: list[dict[str, Any]]) -> None:
    """Keep-alive and pipelined requests, content-length and chunked, bodies over several ticks, HEAD."""
    plain, guarded = servers
    data = _wire(reqs)
    expected = plain.exchange(data)
    assert expected.count(b"HTTP/1.1 ") >= len(reqs)
    assert guarded.exchange(data) == expected


class Recorder:
    """A real transport's stand-in that notes, at each write, what the WAL file holds."""

    def __init__(self, wal_dir: Path) -> None:
        self.wal_dir = wal_dir
        self.writes: list[tuple[bytes, bytes]] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        on_disk = b"".join(p.read_bytes() for p in sorted(self.wal_dir.glob("*.wal")))
        self.writes.append((data, on_disk))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


def _ctx(n: int) -> CallContext:
    return CallContext("v", "tools/call", {"name": "t", "arguments": {"n": n}}, n, "modern", "2026-07-28")


async def test_a_reply_leaves_after_the_records_of_its_tick_in_one_write(tmp_path: Path) -> None:
    log = AuditLog([FakeSink()], wal_dir=tmp_path / "wal")
    await log.start()
    recorders = [Recorder(tmp_path / "wal") for _ in range(3)]
    boxes = [Outbox(r) for r in recorders]  # type: ignore[arg-type]
    for n, box in enumerate(boxes):
        log.record(_ctx(n), Outcome("ok", 0.0))
        box.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
        box.write(b"{}")
    assert all(r.writes == [] for r in recorders)  # held until the end of the tick
    await asyncio.sleep(0)  # the tick ends: the barrier drains
    for r in recorders:
        assert [w for w, _ in r.writes] == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"]
        assert r.writes[0][1].count(b"\n") == 3  # all three records were on file before the first reply
    await log.aclose()


async def test_a_closing_connection_writes_its_records_then_its_reply_at_once(tmp_path: Path) -> None:
    log = AuditLog([FakeSink()], wal_dir=tmp_path / "wal")
    await log.start()
    rec = Recorder(tmp_path / "wal")
    box = Outbox(rec)  # type: ignore[arg-type]
    log.record(_ctx(1), Outcome("ok", 0.0))
    box.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
    box.close()  # uvicorn closes right after the body when the connection is not kept alive
    assert rec.closed and len(rec.writes) == 1 and rec.writes[0][1].count(b"\n") == 1
    await asyncio.sleep(0)
    assert len(rec.writes) == 1  # the drain has nothing left for it
    await log.aclose()


async def test_a_failing_release_does_not_strand_the_other_replies() -> None:
    barrier = WriteBarrier()
    released: list[int] = []

    class Box:
        def __init__(self, n: int) -> None:
            self.n = n

        def release(self) -> None:
            if self.n == 0:
                raise RuntimeError("transport is gone")
            released.append(self.n)

    for n in range(3):
        barrier.hold(Box(n))
    with pytest.raises(RuntimeError):
        barrier.drain()
    await asyncio.sleep(0)  # the rest were rescheduled
    assert released == [1, 2]


def test_without_a_running_loop_the_wal_appends_at_once(tmp_path: Path) -> None:
    from stile.observe.audit_wal import Wal

    wal = Wal(tmp_path, "boot")
    wal.open()
    assert wal.stage(b"one\n") == 1 and wal.live is not None and wal.live.size == 4
    wal.close()
    assert BARRIER is not None


async def _status(app_: Any, headers: list[tuple[bytes, bytes]], scope_extra: dict[str, Any]) -> int:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(msg: dict[str, Any]) -> None:
        sent.append(msg)

    scope = {"type": "http", "method": "GET", "path": "/readyz", "query_string": b"", "headers": headers,
             **scope_extra}
    await app_(scope, receive, send)
    return int(sent[0]["status"])


async def test_the_app_checks_the_head_size_unless_the_protocol_capped_it(tmp_path: Path) -> None:
    from stile.assembly import assemble
    from stile.config.load import parse_config
    from stile.frontends.app import StileApp
    from stile.frontends.protocol import HEAD_CHECKED

    cfg = parse_config({"upstreams": {}, "virtual_servers": {}, "limits": {"max_header_bytes": 4096}})
    app_ = StileApp(assemble(cfg, f"sqlite:///{tmp_path / 'state.db'}"), start_gateway=False)
    big = [(b"host", b"127.0.0.1"), (b"x-big", b"a" * 5000)]
    assert await _status(app_, big, {}) == 431  # another server: the app's own check
    assert await _status(app_, big, {HEAD_CHECKED: 8192}) == 431  # a looser cap upstream of it: checked again
    assert await _status(app_, [(b"host", b"127.0.0.1")], {HEAD_CHECKED: 4096}) != 431
