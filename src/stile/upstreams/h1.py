"""A minimal keep-alive HTTP/1.1 client for upstream calls: asyncio protocols + httptools (llhttp).

Why: the upstream client leg is most of a plain proxy's CPU (DESIGN §6-§7); a client this small costs a
fraction of aiohttp's per request (see ``bench/h1_vs_aiohttp.py``). It does only what an MCP upstream
needs: one origin per pool, requests with an in-memory body, responses with content-length, chunked or
close-delimited bodies, read whole or streamed (``text/event-stream``).

Design:

* One ``_Conn`` (an ``asyncio.Protocol``) per TCP/TLS connection, with one ``httptools`` response
  parser that llhttp reuses for consecutive keep-alive responses. No pipelining: a connection carries
  one request at a time. Transports are only used through their methods (uvloop's are not asyncio
  classes).
* ``H1Pool`` keeps idle connections on a LIFO stack (the warmest is reused, the oldest expire after
  ``keepalive_timeout``) and counts every open or opening connection against ``max_connections``;
  callers beyond it queue until a connection is released or closed.
* A connection goes back to the pool the moment its response message is complete (the whole body is
  then buffered in the ``H1Response``), if both sides agreed on keep-alive (``Connection: close``,
  HTTP/1.0 without keep-alive, close-delimited bodies, HEAD and parse errors all close it). Closing a
  response, or leaving its ``async with``, before then closes the connection: that is how a caller
  abandons a stream. Cancelling a task inside ``request()`` or a body read does the same.
* Flow control: a response buffers about ``_HIGH_WATER`` bytes before its transport is paused; taking
  the buffer (``read``/``iter_chunks``) resumes it.
* Keep-alive race: a server may close an idle connection just as a request is written on it. If a
  *reused* connection dies before any byte of the response arrived, the request is sent once more on
  a new connection (as browsers do; a server that dies after processing but before answering would
  then see the request twice).

Not supported: proxies, redirects, compression, 100-continue uploads, streamed request bodies, trailers
(parsed, dropped), protocol upgrades, HTTP/2. Response heads are capped at ``_MAX_HEAD`` bytes; a body
read whole is capped by ``read(limit)`` (``H1TooLarge``; streams are bounded by their reader, ``iter_chunks``
holds at most ~``_HIGH_WATER``). Header values with CR, LF or non-Latin-1 text are refused (``H1HeaderError``)
before anything is sent. Time limits other than connecting are the caller's
(``asyncio.timeout`` around a call is safe: cancellation closes the connection).
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import AsyncIterator, Mapping
from typing import cast
from urllib.parse import urlsplit

import httptools

from stile.upstreams.causes import os_cause

__all__ = ["H1Error", "H1HeaderError", "H1Pool", "H1Response", "H1Timeout", "H1TooLarge"]

_HIGH_WATER = 256 * 1024  # buffered body bytes per response before reading pauses
_MAX_HEAD = 64 * 1024  # response status line + headers
_COPY_LIMIT = 64 * 1024  # request bodies up to this size are sent in one buffer with the head
_NO_BODY_METHODS = frozenset({"GET", "HEAD", "DELETE", "OPTIONS"})
_SKIP_HEADERS = frozenset({"host", "content-length", "transfer-encoding"})  # this module writes those


class H1Error(Exception):
    """Connection refused, reset or closed early, a malformed response, or a closed pool/response.

    `str()` is the full text (it may name the host); `cause` the short words a client may see.
    """

    def __init__(self, message: str, cause: str | None = None) -> None:
        super().__init__(message)
        self.cause = cause or message

    maybe_sent = True  # False only on a connect failure before this request went out on any connection


class H1Timeout(H1Error):
    """No connection within ``connect_timeout``."""


class H1TooLarge(H1Error):
    """A body read whole was larger than the caller's limit (the connection is closed, nothing more is read)."""


class H1HeaderError(H1Error, ValueError):
    """A request line or header would carry CR, LF or non-Latin-1 text (header injection): nothing was sent."""


class _Stale(H1Error):
    """The connection closed before any byte of the response arrived."""


def _split(url: str) -> tuple[str, str, int, str]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname or parts.username is not None:
        raise ValueError(f"expected http(s)://host[:port]/path without credentials, got {url!r}")
    port = parts.port or (443 if scheme == "https" else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return scheme, parts.hostname, port, target


class H1Response:
    """Status and headers of a response; its body is read whole (``read``) or as it arrives."""

    __slots__ = ("_chunks", "_conn", "_done", "_error", "_size", "_waiter", "headers", "status")

    def __init__(self, status: int, headers: Mapping[str, str], conn: _Conn | None) -> None:
        self.status = status
        self.headers = headers  # lower-case names; the last value wins
        self._conn = conn  # set while the body is still arriving
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._done = False
        self._error: H1Error | None = None
        self._waiter: asyncio.Future[None] | None = None

    async def read(self, limit: int | None = None) -> bytes:
        """The whole (remaining) body; more than `limit` bytes closes the response and raises H1TooLarge."""
        if self._done and self._error is None:  # fast path: everything arrived with the headers
            data = b"".join(self._chunks)
            self._chunks.clear()
            self._size = 0
            if limit is not None and len(data) > limit:
                raise H1TooLarge(f"response body larger than {limit} bytes")
            return data
        if limit is not None:
            announced = self.headers.get("content-length", "")
            if announced.isdigit() and int(announced) > limit:
                self.close()
                raise H1TooLarge(f"response body of {announced} bytes, more than {limit}")
        parts = []
        size = 0
        while (chunk := await self._next()) is not None:
            size += len(chunk)
            if limit is not None and size > limit:
                self.close()
                raise H1TooLarge(f"response body larger than {limit} bytes")
            parts.append(chunk)
        return b"".join(parts)

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        """Yield body bytes as they arrive (everything buffered so far, at most ~``_HIGH_WATER``)."""
        while (chunk := await self._next()) is not None:
            yield chunk

    def close(self) -> None:
        """Drop the body; if it has not fully arrived, close the connection."""
        conn = self._conn
        self._chunks.clear()
        self._size = 0
        self._finish(H1Error("response closed before its body was complete"))
        if conn is not None:
            conn.resp = None
            conn.close()

    async def __aenter__(self) -> H1Response:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()

    async def _next(self) -> bytes | None:
        while not self._chunks:
            if self._error is not None:
                raise self._error
            if self._done:
                return None
            self._waiter = fut = asyncio.get_running_loop().create_future()
            try:
                await fut
            except asyncio.CancelledError:
                self.close()
                raise
        data = self._chunks.popleft() if len(self._chunks) == 1 else b"".join(self._chunks)
        self._chunks.clear()
        self._size = 0
        conn = self._conn
        if conn is not None and conn.paused:
            conn.pause(False)
        return data

    # called by the connection
    def _feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._size += len(data)
        conn = self._conn
        if self._size > _HIGH_WATER and conn is not None and not conn.paused:
            conn.pause(True)
        self._wake()

    def _finish(self, error: H1Error | None = None) -> None:
        self._conn = None
        if not self._done:
            self._done = True
            self._error = error
        self._wake()

    def _wake(self) -> None:
        fut, self._waiter = self._waiter, None
        if fut is not None and not fut.done():
            fut.set_result(None)


class _Conn(asyncio.Protocol):
    """One connection: writes requests, parses responses, feeds bodies to the current H1Response."""

    def __init__(self, pool: H1Pool, loop: asyncio.AbstractEventLoop) -> None:
        self.pool = pool
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[H1Response] | None = None  # the caller awaiting response headers
        self.resp: H1Response | None = None  # the response whose body is arriving
        self.headers: dict[str, str] = {}
        self.received = 0  # bytes of the current response so far
        self.reuse = True  # the request allows keep-alive
        self.head_only = False
        self.until_close = False  # close-delimited body
        self.informational = False  # parsing a 1xx interim response
        self.paused = False
        self.dead = False
        self.idle = False
        self.idle_since = 0.0
        self.lost: asyncio.Future[None] = loop.create_future()

    def send(self, data: bytes, body: bytes, reuse: bool, head_only: bool) -> asyncio.Future[H1Response]:
        transport = self.transport
        assert transport is not None and self.waiter is None and self.resp is None
        self.waiter = fut = self.loop.create_future()
        self.received = 0
        self.reuse = reuse
        self.head_only = head_only
        self.until_close = False
        transport.write(data)
        if body:
            transport.write(body)
        return fut

    def close(self) -> None:
        self._mark_dead()
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.abort()

    def pause(self, paused: bool) -> None:
        self.paused = paused
        if self.transport is not None and not self.dead:
            (self.transport.pause_reading if paused else self.transport.resume_reading)()

    def _mark_dead(self) -> None:
        if not self.dead:
            self.dead = True
            self.pool._forget(self)

    def _fail(self, error: H1Error) -> None:
        """Fail whatever is in flight with ``error`` and close."""
        resp, self.resp = self.resp, None
        if resp is not None:
            resp._finish(error)
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)
        self.close()

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self.waiter is None and self.resp is None:
            self._fail(H1Error("unsolicited bytes from the server"))
            return
        self.received += len(data)
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self._fail(H1Error(f"malformed HTTP response: {exc!r}"))
            return
        if self.waiter is not None and self.received > _MAX_HEAD:
            self._fail(H1Error(f"response headers larger than {_MAX_HEAD} bytes"))

    def eof_received(self) -> bool | None:
        self._mark_dead()
        return None  # let the transport close; connection_lost settles the response

    def connection_lost(self, exc: Exception | None) -> None:
        self._mark_dead()
        if not self.lost.done():
            self.lost.set_result(None)
        resp, self.resp = self.resp, None
        if resp is not None:
            if self.until_close and exc is None:
                resp._finish()
            else:
                resp._finish(H1Error(f"connection lost before the body was complete: {exc or 'closed'}"))
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            error = H1Error("connection closed mid-headers") if self.received else _Stale("closed before any answer")
            error.__cause__ = exc
            waiter.set_exception(error)

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if status < 200:  # 100 Continue, 103 Early Hints: skip (101 Upgrade fails in feed_data)
            self.informational = True
            return
        headers, self.headers = self.headers, {}
        waiter, self.waiter = self.waiter, None
        if self.dead or waiter is None or waiter.done():  # closed, or the caller went away
            self.close()
            return
        if self.head_only:  # llhttp cannot be told to skip a HEAD body: finish here, never reuse
            resp = H1Response(status, headers, None)
            resp._finish()
            self.close()
        else:
            te = headers.get("transfer-encoding")
            chunked = te is not None and "chunked" in te.lower()
            self.until_close = not chunked and "content-length" not in headers and status not in (204, 304)
            self.resp = resp = H1Response(status, headers, self)
        waiter.set_result(resp)

    def on_body(self, body: bytes) -> None:
        if self.resp is not None:
            self.resp._feed(body)

    def on_message_complete(self) -> None:
        if self.informational:
            self.informational = False
            self.headers = {}
            return
        resp, self.resp = self.resp, None
        if resp is None or self.dead:
            return
        resp._finish()
        if self.paused:
            self.pause(False)
        if self.reuse and self.parser.should_keep_alive():
            self.pool._release(self)
        else:
            self.close()


class H1Pool:
    """Keep-alive HTTP/1.1 connections to one origin, bounded by ``max_connections``.

    Bound to the event loop of its first request. ``ssl_context`` overrides
    ``ssl.create_default_context()`` for https (a private CA, say).
    """

    def __init__(self, url: str, *, max_connections: int = 100, connect_timeout: float = 10.0,
                 keepalive_timeout: float = 60.0, ssl_context: ssl.SSLContext | None = None) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self.url = url
        self._scheme, self._host, self._port, self._target = _split(url)
        host = f"[{self._host}]" if ":" in self._host else self._host
        default_port = 443 if self._scheme == "https" else 80
        self._host_header = host if self._port == default_port else f"{host}:{self._port}"
        https = self._scheme == "https"
        self._ssl: ssl.SSLContext | None = (ssl_context or ssl.create_default_context()) if https else None
        self._max = max_connections
        self._connect_timeout = connect_timeout
        self._keepalive = keepalive_timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._conns: set[_Conn] = set()  # every open or opening connection
        self._idle: deque[_Conn] = deque()  # oldest left, newest right
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._sweeper: asyncio.TimerHandle | None = None
        self._closed = False

    async def request(self, method: str, headers: Mapping[str, str], body: bytes = b"",
                      url: str | None = None) -> H1Response:
        """Send one request; return once the response headers arrived (read the body from the result)."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        data, extra, reuse = self._encode(method, self._target if url is None else self._target_of(url), headers, body)
        head_only = method == "HEAD"
        for fresh in (False, True):  # fresh: the keep-alive race, once more on a new connection
            try:
                conn, reused = await self._acquire(fresh)
            except H1Error as exc:
                exc.maybe_sent = fresh  # the first try went out on a connection that then died
                raise
            fut = conn.send(data, extra, reuse, head_only)
            try:
                return await fut
            except _Stale:
                if fresh or not reused:
                    raise
            except asyncio.CancelledError:
                if fut.done() and not fut.cancelled() and fut.exception() is None:
                    fut.result().close()  # the headers arrived as we were cancelled
                else:
                    conn.close()
                raise
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        """Close every connection (in-flight responses fail with H1Error) and refuse new requests."""
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        conns = list(self._conns)
        for conn in conns:
            conn._fail(H1Error("pool closed"))
        self._wake(everyone=True)
        pending = [c.lost for c in conns if c.transport is not None and not c.lost.done()]
        if pending:
            await asyncio.wait(pending, timeout=5.0)

    def _target_of(self, url: str) -> str:
        if url.startswith("/"):
            return url
        scheme, host, port, target = _split(url)
        if (scheme, host, port) != (self._scheme, self._host, self._port):
            raise ValueError(f"{url!r} is not on this pool's origin {self.url!r}")
        return target

    def _encode(self, method: str, target: str, headers: Mapping[str, str], body: bytes) -> tuple[bytes, bytes, bool]:
        parts = [method, " ", target, " HTTP/1.1\r\nHost: ", self._host_header, "\r\n"]
        lines = 2
        reuse = True
        for name, value in headers.items():
            lname = name.lower()
            if lname in _SKIP_HEADERS:
                continue
            if lname == "connection" and "close" in value.lower():
                reuse = False
            parts += (name, ": ", value, "\r\n")
            lines += 1
        if body or method not in _NO_BODY_METHODS:
            parts += ("Content-Length: ", str(len(body)), "\r\n")
            lines += 1
        parts.append("\r\n")
        head = "".join(parts)
        if head.count("\n") != lines + 1 or head.count("\r") != lines + 1:
            raise H1HeaderError("CR or LF in the request method, target or a header")
        try:
            data = head.encode("latin-1")
        except UnicodeEncodeError as exc:
            raise H1HeaderError("non-Latin-1 text in the request method, target or a header") from exc
        if len(body) <= _COPY_LIMIT:
            return data + body, b"", reuse
        return data, body, reuse

    async def _acquire(self, fresh: bool) -> tuple[_Conn, bool]:
        """An idle connection (reused=True) or a new one; waits while ``max_connections`` are busy."""
        assert self._loop is not None
        requeue = False
        while True:
            if self._closed:
                raise H1Error("pool closed")
            if self._idle and not fresh:
                conn = self._idle.pop()
                conn.idle = False
                return conn, True
            if len(self._conns) < self._max:
                return await self._connect(), False
            if self._idle:  # fresh wanted but all slots taken: drop the oldest idle connection
                self._pop_oldest().close()
                continue
            fut = self._loop.create_future()
            if requeue:  # woken but someone else took the connection: stay first in line
                self._waiters.appendleft(fut)
            else:
                self._waiters.append(fut)
            requeue = True
            try:
                await fut
            except asyncio.CancelledError:
                if fut.done() and not fut.cancelled():
                    self._wake()  # pass the wake-up on
                raise

    async def _connect(self) -> _Conn:
        assert self._loop is not None
        loop = self._loop
        conn = _Conn(self, loop)
        self._conns.add(conn)
        ok = False
        try:
            async with asyncio.timeout(self._connect_timeout):
                await loop.create_connection(lambda: conn, self._host, self._port, ssl=self._ssl)
            if self._closed:
                raise H1Error("pool closed")
            ok = True
            return conn
        except TimeoutError as exc:
            cause = f"connect timeout after {self._connect_timeout:g}s"
            raise H1Timeout(f"cannot connect to {self._host}:{self._port}: {cause}", cause) from exc
        except OSError as exc:  # refused, unreachable, DNS, TLS handshake
            cause = os_cause(exc)
            raise H1Error(f"cannot connect to {self._host}:{self._port}: {cause}", cause) from exc
        finally:
            if not ok:
                conn.close()

    def _release(self, conn: _Conn) -> None:
        if self._closed:
            conn.close()
            return
        assert self._loop is not None
        conn.idle = True
        conn.idle_since = self._loop.time()
        self._idle.append(conn)
        if self._sweeper is None:
            self._sweeper = self._loop.call_at(conn.idle_since + self._keepalive, self._sweep)
        self._wake()

    def _forget(self, conn: _Conn) -> None:
        self._conns.discard(conn)
        if conn.idle:
            conn.idle = False
            self._idle.remove(conn)
        self._wake()

    def _pop_oldest(self) -> _Conn:
        conn = self._idle.popleft()
        conn.idle = False
        return conn

    def _sweep(self) -> None:
        assert self._loop is not None
        self._sweeper = None
        expired = self._loop.time() - self._keepalive + 0.01  # timers may fire a hair early
        while self._idle and self._idle[0].idle_since <= expired:
            self._pop_oldest().close()
        if self._idle:
            self._sweeper = self._loop.call_at(self._idle[0].idle_since + self._keepalive, self._sweep)

    def _wake(self, everyone: bool = False) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                if not everyone:
                    return
