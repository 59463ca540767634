"""H1Pool against real loopback servers on both event loops, and its parser fed random chunk splits.

Every test body runs under an overall deadline; waits are on server events (``Server.until``), never sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import itertools
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httptools
import orjson
import pytest
import uvloop
from hypothesis import given, settings
from hypothesis import strategies as st

from stile.upstreams import h1
from stile.upstreams.h1 import H1Error, H1HeaderError, H1Pool, H1Timeout, H1TooLarge

DEADLINE = 15.0
BIG = bytes(range(256)) * (5 * 1024 * 1024 // 256)  # 5 MiB
Main = Callable[[], Awaitable[None]]


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Callable[[Main], None]:
    factory = asyncio.new_event_loop if request.param == "asyncio" else uvloop.new_event_loop

    def runner(main: Main) -> None:
        async def bounded() -> None:
            async with asyncio.timeout(DEADLINE):
                await main()

        with asyncio.Runner(loop_factory=factory) as r:
            r.run(bounded())

    return runner


# ---------------------------------------------------------------------------------------------- server


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class Server:
    """A raw asyncio HTTP/1.1 server with one path per behaviour; counts connections and requests."""

    def __init__(self) -> None:
        self.opened = 0
        self.closed = 0
        self.requests: list[Request] = []
        self.dropped = 0  # requests closed without an answer (drop_reused)
        self.pending = 0  # requests parked at /gate
        self.max_pending = 0
        self.drop_reused = False  # close, unanswered, any request after a connection's first
        self.close_after_response = False  # close right after answering, though keep-alive was implied
        self.gate = asyncio.Event()
        self.sse_next = asyncio.Event()  # each set emits one SSE event
        self._changed = asyncio.Event()
        self._server: asyncio.Server | None = None
        self.port = 0
        self.scheme = "http"

    async def start(self, ssl_ctx: ssl.SSLContext | None = None) -> Server:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _ServerConn(self), "127.0.0.1", 0, ssl=ssl_ctx)
        self.port = self._server.sockets[0].getsockname()[1]
        self.scheme = "https" if ssl_ctx else "http"
        return self

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        self.gate.set()

    def url(self, path: str) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}{path}"

    def notify(self) -> None:
        ev, self._changed = self._changed, asyncio.Event()
        ev.set()

    async def until(self, pred: Callable[[], bool]) -> None:
        async with asyncio.timeout(5.0):
            while not pred():
                await self._changed.wait()

    async def handle(self, c: _ServerConn, req: Request) -> None:
        w = c.transport.write
        path = req.path.split("?")[0]
        if path == "/json":
            body = orjson.dumps(
                {"method": req.method, "path": req.path, "body": req.body.decode(), "headers": req.headers}
            )
            c.respond(200, body, b"Content-Type: application/json\r\n", head=req.method == "HEAD")
        elif path == "/chunked":
            w(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for piece in (b"hello ", b"chunked ", b"world"):
                w(_chunk(piece))
            w(b"0\r\n\r\n")
        elif path == "/sse":
            w(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
            n = 0
            while not c.transport.is_closing():
                await self.sse_next.wait()
                self.sse_next.clear()
                n += 1
                w(_chunk(b"data: %d\n\n" % n))
        elif path == "/close":
            c.respond(200, b"bye", b"Connection: close\r\n")
            c.transport.close()
        elif path == "/http10":
            w(b"HTTP/1.0 200 OK\r\nContent-Length: 4\r\n\r\nold!")
            c.transport.close()
        elif path == "/until-close":
            w(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n")
            w(b"all ")
            w(b"of it")
            c.transport.close()
        elif path == "/big":
            c.respond(200, BIG)
        elif path == "/gate":
            self.pending += 1
            self.max_pending = max(self.max_pending, self.pending)
            self.notify()
            await self.gate.wait()
            self.pending -= 1
            c.respond(200, b"ok")
        elif path == "/hang":
            await asyncio.Event().wait()
        elif path == "/interim":
            w(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        elif path == "/garbage":
            w(b"NOT HTTP AT ALL\r\n\r\n")
        elif path == "/huge-headers":
            w(b"HTTP/1.1 200 OK\r\n" + b"X-Filler: %s\r\n" % (b"f" * 1000) * 100)
        else:
            c.respond(404, b"not found")
        if self.close_after_response:
            c.transport.close()


class _ServerConn(asyncio.Protocol):
    def __init__(self, srv: Server) -> None:
        self.srv = srv
        self.parser = httptools.HttpRequestParser(self)
        self.transport: Any = None
        self.served = 0
        self.tasks: set[asyncio.Task[None]] = set()
        self._reset()

    def _reset(self) -> None:
        self.url = b""
        self.headers: dict[str, str] = {}
        self.body: list[bytes] = []

    def respond(self, status: int, body: bytes, extra: bytes = b"", head: bool = False) -> None:
        reason = b"OK" if status == 200 else b"Not Found"
        self.transport.write(b"HTTP/1.1 %d %s\r\nContent-Length: %d\r\n%s\r\n" % (status, reason, len(body), extra))
        if not head:
            self.transport.write(body)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.srv.opened += 1
        self.srv.notify()

    def connection_lost(self, exc: Exception | None) -> None:
        for task in self.tasks:
            task.cancel()
        self.srv.closed += 1
        self.srv.notify()

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.close()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode().lower()] = value.decode()

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        req = Request(self.parser.get_method().decode(), self.url.decode(), self.headers, b"".join(self.body))
        self._reset()
        self.served += 1
        self.srv.requests.append(req)
        self.srv.notify()
        if self.srv.drop_reused and self.served > 1:
            self.srv.dropped += 1
            self.transport.close()
            return
        task = asyncio.ensure_future(self.srv.handle(self, req))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)


@contextlib.asynccontextmanager
async def serving(ssl_ctx: ssl.SSLContext | None = None) -> AsyncIterator[Server]:
    srv = await Server().start(ssl_ctx)
    try:
        yield srv
    finally:
        await srv.stop()


@contextlib.asynccontextmanager
async def pool_for(srv: Server, path: str = "/json", **kw: Any) -> AsyncIterator[H1Pool]:
    pool = H1Pool(srv.url(path), **kw)
    try:
        yield pool
    finally:
        await pool.aclose()


async def get(pool: H1Pool, path: str, method: str = "GET", body: bytes = b"") -> tuple[int, bytes]:
    async with await pool.request(method, {"Accept": "*/*"}, body, url=path) as resp:
        return resp.status, await resp.read()


# ----------------------------------------------------------------------------------------------- tests


def test_bodies_exact_and_one_connection_for_sequential_requests(run: Callable[[Main], None]) -> None:
    async def main() -> None:
        async with serving() as srv, pool_for(srv) as pool:
            payload = b'{"jsonrpc":"2.0","id":1,"method":"ping"}'
            for _ in range(20):
                resp = await pool.request("POST", {"Content-Type": "application/json", "X-Trace": "t1"}, payload)
                assert resp.status == 200
                assert resp.headers["content-type"] == "application/json"
                echoed = orjson.loads(await resp.read())
                assert echoed["body"] == payload.decode()
                assert echoed["headers"]["host"] == f"127.0.0.1:{srv.port}"
                assert echoed["headers"]["content-length"] == str(len(payload))
                assert echoed["headers"]["x-trace"] == "t1"
            big_request = b"y" * 200_000  # written separately from the head
            status, echoed_big = await get(pool, "/json", "POST", big_request)
            assert status == 200 and orjson.loads(echoed_big)["body"] == big_request.decode()
            assert await get(pool, "/chunked") == (200, b"hello chunked world")
            assert await get(pool, "/nope") == (404, b"not found")
            assert await get(pool, "/interim") == (200, b"ok")
            assert (await get(pool, f"http://127.0.0.1:{srv.port}/json?q=1", "DELETE"))[0] == 200
            assert srv.requests[-1].path == "/json?q=1" and "content-length" not in srv.requests[-1].headers
            assert srv.opened == 1 and len(srv.requests) == 25

    run(main)


def test_big_body_whole_and_streamed_with_bounded_chunks(run: Callable[[Main], None]) -> None:
    async def main() -> None:
        async with serving() as srv, pool_for(srv) as pool:
            assert await get(pool, "/big") == (200, BIG)
            async with await pool.request("GET", {}, url="/big") as resp:
                parts = [chunk async for chunk in resp.iter_chunks()]
            assert b"".join(parts) == BIG
            # the transport pauses above the high-water mark; one more read of at most 256 KiB may land
            assert max(map(len, parts)) <= h1._HIGH_WATER + 256 * 1024
            assert srv.opened == 1

    run(main)


def test_connection_close_http10_and_until_close_are_not_reused(run: Callable[[Main], None]) -> None:
    async def main() -> None:
        async with serving() as srv, pool_for(srv) as pool:
            assert await get(pool, "/close") == (200, b"bye")
            assert await get(pool, "/http10") == (200, b"old!")
            assert await get(pool, "/until-close") == (200, b"all of it")
            status, _ = await get(pool, "/json", "HEAD")
            assert status == 200
            assert await get(pool, "/json") == (200, await _json_body(srv, pool))
            assert srv.opened == 5  # one each for the four closing kinds, then one kept alive

    async def _json_body(srv: Server, pool: H1Pool) -> bytes:
        return orjson.dumps(
            {
                "method": "GET",
                "path": "/json",
                "body": "",
                "headers": {"host": f"127.0.0.1:{srv.port}", "accept": "*/*"},
            }
        )

    run(main)


def test_caller_connection_close_header_is_honoured(run: Callable[[Main], None]) -> None:
    async def main() -> None:
        async with serving() as srv, pool_for(srv) as pool:
            for _ in range(3):
                async with await pool.request("GET", {"Connection": "close"}) as resp:
                    await resp.read()
            await srv.until(lambda: srv.closed == 3)
            assert srv.opened == 3

    run(main)


def test_bounded_pool_under_concurrency(run: Callable[[Main], None]) -> None:
    async def main() -> None:
        async with serving() as srv, pool_for(srv, max_connections=4) as pool:
            tasks = [asyncio.create_task(get(pool, "/gate")) for _ in range(64)]
            await srv.until(lambda: srv.pending == 4)
            srv.gate.set()
            assert await asyncio.gather(*tasks) == [(200, b"ok")] * 64
            assert srv.opened == 4 and srv.max_pending == 4
            # and without a gate, plain concurrency stays bounded too
            results = await asyncio.gather(*(get(pool, "/chunked") for _ in range(64)))
            assert results == [(200, b"hello chunked world")] * 64
            assert srv.opened == 4

    run(main)


def test_sse_streams_as_bytes_arrive_and_closing_mid_stream_closes_the_connection(
    run: Callable[[Main], None],
) -> None:
    async def main() -> None:
        async with serving() as srv, pool_for(srv) as pool:
            async with await pool.request("GET", {"Accept": "text/event-stream"}, url="/sse") as resp:
                assert resp.headers["content-type"] == "text/event-stream"
                chunks = resp.iter_chunks()
                for n in (1, 2, 3):
                    srv.sse_next.set()  # the server emits exactly one event now
                    assert await anext(chunks) == b"data: %d\n\n" % n
            await srv.until(lambda: srv.closed == 1)
            assert await get(pool, "/chunked") == (200, b"hello chunked world")
            assert srv.opened == 2

    run(main)


def test_keepalive_race_is_retried_once_on_a_fresh_connection(run: Callable[[Main], None]) -> None:
    async def main() -> None:
        async with serving() as srv, pool_for(srv) as pool:
            srv.drop_reused = True  # the idle connection "dies" exactly when the next request arrives
            assert await get(pool, "/chunked") == (200, b"hello chunked world")
            assert await get(pool, "/chunked") == (200, b"hello chunked world")
            assert srv.dropped == 1 and srv.opened == 2 and len(srv.requests) == 3

    run(main)


def test_server_closing_idle_connections(run: Callable[[Main], None]) -> None:
    async def main() -> None:
        async with serving() as srv, pool_for(srv) as pool:
            srv.close_after_response = True
            for n in range(1, 6):
                assert await get(pool, "/chunked") == (200, b"hello chunked world")
                await srv.until(lambda n=n: srv.closed == n)  # type: ignore[misc]
            assert srv.opened == 5 and len(srv.requests) == 5

    run(main)


def test_idle_connections_expire_after_keepalive_timeout(run: Callable[[Main], None]) -> None:
    async def main() -> None:
        async with serving() as srv, pool_for(srv, keepalive_timeout=0.05) as pool:
            assert (await get(pool, "/chunked"))[0] == 200
            await srv.until(lambda: srv.closed == 1)  # the client closed its idle connection
            assert not pool._conns and not pool._idle
            assert (await get(pool, "/chunked"))[0] == 200
            assert srv.opened == 2

    run(main)


def test_connect_refused_and_timeout(run: Callable[[Main], None]) -> None:
    async def main() -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        pool = H1Pool(f"http://127.0.0.1:{port}/mcp")
        with pytest.raises(H1Error, match="cannot connect"):
            await pool.request("GET", {})
        assert not pool._conns
        await pool.aclose()

        with socket.socket() as listener, contextlib.ExitStack() as stack:  # a full accept queue: SYNs dropped
            listener.bind(("127.0.0.1", 0))
            listener.listen(0)
            for _ in range(4):
                c = stack.enter_context(socket.socket())
                c.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    c.connect(listener.getsockname())
            pool = H1Pool(f"http://127.0.0.1:{listener.getsockname()[1]}/", connect_timeout=0.2)
            with pytest.raises(H1Timeout):
                await pool.request("GET", {})
            assert not pool._conns
            await pool.aclose()

    run(main)


def test_malformed_response_is_an_error_and_the_pool_recovers(run: Callable[[Main], None]) -> None:
    async def main() -> None:
        async with serving() as srv, pool_for(srv) as pool:
            with pytest.raises(H1Error, match="malformed"):
                await get(pool, "/garbage")
            with pytest.raises(H1Error, match="headers larger than"):
                await get(pool, "/huge-headers")
            assert await get(pool, "/chunked") == (200, b"hello chunked world")
            assert not pool._conns - set(pool._idle)

    run(main)


def test_cancellation_leaves_no_leaked_connection(run: Callable[[Main], None]) -> None:
    async def main() -> None:
        async with serving() as srv, pool_for(srv, max_connections=1) as pool:
            hanging = asyncio.create_task(get(pool, "/hang"))
            await srv.until(lambda: len(srv.requests) == 1)
            queued = asyncio.create_task(get(pool, "/chunked"))  # waits for the only slot
            await asyncio.sleep(0)  # let it queue (a yield, not a timed wait)
            assert len(pool._waiters) == 1
            queued.cancel()
            hanging.cancel()
            for task in (hanging, queued):
                with pytest.raises(asyncio.CancelledError):
                    await task
            await srv.until(lambda: srv.closed == 1)
            assert not pool._conns and not pool._idle
            assert await get(pool, "/chunked") == (200, b"hello chunked world")

            reading = asyncio.create_task(_read_sse(pool))  # cancelled while streaming a body
            await srv.until(lambda: len(srv.requests) == 3)
            reading.cancel()
            with pytest.raises(asyncio.CancelledError):
                await reading
            await srv.until(lambda: srv.closed == 2)
            assert not pool._conns
            assert await get(pool, "/chunked") == (200, b"hello chunked world")
            assert srv.opened == 3

    async def _read_sse(pool: H1Pool) -> None:
        resp = await pool.request("GET", {}, url="/sse")  # no `async with`: cancellation alone must close it
        async for _ in resp.iter_chunks():
            pass

    run(main)


def test_aclose_fails_in_flight_requests_and_refuses_new_ones(run: Callable[[Main], None]) -> None:
    async def main() -> None:
        async with serving() as srv:
            pool = H1Pool(srv.url("/hang"))
            task = asyncio.create_task(pool.request("GET", {}))
            await srv.until(lambda: len(srv.requests) == 1)
            await pool.aclose()
            with pytest.raises(H1Error, match="pool closed"):
                await task
            with pytest.raises(H1Error, match="pool closed"):
                await pool.request("GET", {})
            await srv.until(lambda: srv.closed == 1)

    run(main)


def test_header_injection_and_other_origins_are_refused() -> None:
    pool = H1Pool("http://127.0.0.1:1/mcp")
    with pytest.raises(ValueError, match="CR or LF"):
        pool._encode("GET", "/", {"X-A": "b\r\nX-Evil: 1"}, b"")
    with pytest.raises(H1HeaderError, match="CR or LF"):
        pool._encode("GET", "/", {"tracestate": "a=b\nX-Evil: 1"}, b"")
    with pytest.raises(H1HeaderError, match="non-Latin-1"):
        pool._encode("GET", "/", {"tracestate": "a=\u2603"}, b"")
    with pytest.raises(ValueError, match="origin"):
        pool._target_of("http://127.0.0.1:2/mcp")
    with pytest.raises(ValueError):
        H1Pool("ftp://127.0.0.1/")
    data, extra, reuse = pool._encode("POST", "/mcp", {"host": "evil", "Content-Length": "9"}, b"{}")
    assert data == b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:1\r\nContent-Length: 2\r\n\r\n{}" and not extra and reuse


def _self_signed(tmp: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    (tmp / "cert.pem").write_bytes(cert_pem)
    (tmp / "key.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(tmp / "cert.pem", tmp / "key.pem")
    client = ssl.create_default_context(cadata=cert_pem.decode())
    return server, client


def test_https(run: Callable[[Main], None], tmp_path: Path) -> None:
    server_ctx, client_ctx = _self_signed(tmp_path)

    async def main() -> None:
        async with serving(server_ctx) as srv:
            async with pool_for(srv, ssl_context=client_ctx) as pool:
                for _ in range(3):
                    assert await get(pool, "/chunked") == (200, b"hello chunked world")
                assert await get(pool, "/big") == (200, BIG)
                assert srv.opened == 1
            async with pool_for(srv) as untrusting:  # the default context does not trust our CA
                with pytest.raises(H1Error, match="cannot connect"):
                    await get(untrusting, "/chunked")

    run(main)


# -------------------------------------------------------------------------------- parser, random splits


class FakeTransport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.paused = False
        self.closing = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def abort(self) -> None:
        self.closing = True

    def is_closing(self) -> bool:
        return self.closing

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False


_JSON = b'{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"hi"}]}}'
_EVENTS = (b'event: message\ndata: {"a":1}\n\n', b'data: {"b":22}\n', b"\n")
RECORDED: list[tuple[bytes, bytes, bool]] = [  # (response on the wire, body, reusable)
    (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nMcp-Session-Id: abc\r\nContent-Length: %d\r\n\r\n%s"
        % (len(_JSON), _JSON),
        _JSON,
        True,
    ),
    (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"%x;ext=1\r\n%s\r\n" % (len(_EVENTS[0]), _EVENTS[0])
        + b"".join(_chunk(e) for e in _EVENTS[1:])
        + b"0\r\nX-Trailer: t\r\n\r\n",
        b"".join(_EVENTS),
        True,
    ),
    (
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 404 Not Found\r\nContent-Length: 9\r\nConnection: close\r\n\r\n"
        b"not found",
        b"not found",
        False,
    ),
    (b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the very end", b"until the very end", False),
]


def _pieces(raw: bytes, cuts: list[int]) -> Iterator[bytes]:
    bounds = [0, *sorted(cuts), len(raw)]
    return (raw[a:b] for a, b in itertools.pairwise(bounds) if b > a)


async def _through_protocol(raw: bytes, cuts: list[int], rounds: int) -> list[tuple[int, str, bytes, bool]]:
    pool = H1Pool("http://127.0.0.1:1/")
    pool._loop = asyncio.get_running_loop()
    conn = h1._Conn(pool, pool._loop)
    pool._conns.add(conn)
    conn.connection_made(FakeTransport())  # type: ignore[arg-type]
    out = []
    for _ in range(rounds):
        fut = conn.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"", True, False)
        for piece in _pieces(raw, cuts):
            conn.data_received(piece)
        if conn.until_close:
            conn.connection_lost(None)
        resp = await fut
        out.append((resp.status, resp.headers.get("content-type", ""), await resp.read(), conn in pool._idle))
        if conn.dead:
            break
        pool._idle.remove(conn)  # "acquire" it again
        conn.idle = False
    return out


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(RECORDED), st.data())
def test_random_chunk_splits_give_the_same_response(recorded: tuple[bytes, bytes, bool], data: st.DataObject) -> None:
    raw, body, reusable = recorded
    cuts = data.draw(st.lists(st.integers(0, len(raw)), max_size=25))
    out = asyncio.run(asyncio.wait_for(_through_protocol(raw, cuts, rounds=2), DEADLINE))
    status = 404 if b"404" in raw else 200
    ctype = raw.partition(b"Content-Type: ")[2].partition(b"\r\n")[0].decode()
    assert out == [(status, ctype, body, reusable)] * (2 if reusable else 1)


def test_flow_control_pauses_a_slow_consumer() -> None:
    async def main() -> None:
        pool = H1Pool("http://127.0.0.1:1/")
        pool._loop = asyncio.get_running_loop()
        conn = h1._Conn(pool, pool._loop)
        pool._conns.add(conn)
        transport = FakeTransport()
        conn.connection_made(transport)  # type: ignore[arg-type]
        fut = conn.send(b"GET / HTTP/1.1\r\n\r\n", b"", True, False)
        size, piece = 1024 * 1024, b"x" * 65536
        conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        resp = await fut
        chunks = resp.iter_chunks()
        fed = 0
        while not transport.paused:
            conn.data_received(piece)
            fed += len(piece)
        assert h1._HIGH_WATER < fed <= h1._HIGH_WATER + len(piece)
        assert await anext(chunks) == b"x" * fed and not transport.paused  # taking the buffer resumes
        for _ in range((size - fed) // len(piece)):
            conn.data_received(piece)
        assert b"".join([c async for c in chunks]) == b"x" * (size - fed)
        assert conn in pool._idle and not transport.paused

    asyncio.run(main())


def test_read_with_a_limit_refuses_bigger_bodies_and_closes_only_that_connection(run: Callable[[Main], None]) -> None:
    async def main() -> None:
        async with serving() as srv, pool_for(srv) as pool:
            resp = await pool.request("GET", {}, url="/big")  # content-length announced: refused up front
            with pytest.raises(H1TooLarge, match=f"{len(BIG)} bytes, more than 65536"):
                await resp.read(65536)
            resp = await pool.request("GET", {}, url="/chunked")  # no length: refused as it arrives
            with pytest.raises(H1TooLarge, match="larger than 10 bytes"):
                await resp.read(10)
            async with await pool.request("GET", {}, url="/chunked") as resp:
                assert await resp.read(19) == b"hello chunked world"  # exactly at the limit is fine
            assert await get(pool, "/big") == (200, BIG)  # the pool works on (with a new connection)

    run(main)
