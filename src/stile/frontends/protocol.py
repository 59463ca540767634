"""uvicorn's httptools protocol with the slow-client and connection defences uvicorn lacks.

- **Connection cap**: beyond `max_connections` open connections (idle keep-alive, SSE and listen streams
  included) a new connection gets `503 Service Unavailable` and is closed at once; the others keep working.
- **Header-receipt timeout**: a connection must deliver a complete request head within
  `header_timeout` seconds of connecting (or of starting the next request), else it gets
  `408 Request Timeout` and is closed (slowloris).
- **Body timeout**: the whole request body must arrive within `body_timeout` seconds of its head, else
  `408` (or, if the application already answered, just a close).
- **Header size cap**: a request head larger than `max_header_bytes` gets `431` and is closed
  before the application sees it.

The two deadlines share one lazy timer per connection: a phase change only moves `_deadline`; the timer,
when it fires early, re-arms itself for the deadline, so a keep-alive request costs no timer of its own.

**One write per reply**: each request's cycle writes through the connection's `Outbox`, which holds the bytes
until the end of the loop tick (`stile.barrier`): status line, headers and body leave in one `write` (uvicorn
makes two), after the audit write-ahead log's one write for every record of that tick.
"""

from __future__ import annotations

import asyncio
import resource
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from stile.barrier import BARRIER

_IDLE, _HEAD, _BODY = 0, 1, 2
# scope key: the request head (URL + headers, 4 bytes each for ": " and CRLF) was capped at this many bytes
HEAD_CHECKED = "stile.head_bytes_checked"


def _reply(transport: asyncio.Transport, status: bytes) -> None:
    if not transport.is_closing():  # uvloop transports are not asyncio.WriteTransport subclasses
        body = status.split(b" ", 1)[1]
        transport.write(b"HTTP/1.1 " + status + b"\r\ncontent-type: text/plain\r\ncontent-length: "
                        + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n" + body)
        transport.close()


class Outbox:
    """A connection's response bytes of this loop tick, written as one at the barrier's drain."""

    __slots__ = ("parts", "transport")

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self.parts:
            BARRIER.hold(self)
        self.parts.append(data)

    def release(self) -> None:
        parts = self.parts
        if parts:
            self.parts = []
            if not self.transport.is_closing():
                self.transport.write(parts[0] if len(parts) == 1 else b"".join(parts))

    def flush(self) -> None:
        """Write what is held now (after the records it must follow): the connection is about to close."""
        if self.parts:
            BARRIER.flush_before()
            self.release()

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def is_closing(self) -> bool:
        return self.transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


def guarded_protocol(header_timeout: float, max_header_bytes: int, body_timeout: float = 30.0,
                     max_connections: int | None = None) -> type[HttpToolsProtocol]:
    class GuardedHttpToolsProtocol(HttpToolsProtocol):
        _timer: asyncio.TimerHandle | None = None
        _deadline = 0.0
        _phase = _IDLE
        _head_bytes = 0
        _out: Outbox | None = None

        def _flush_out(self) -> None:
            if self._out is not None:
                self._out.flush()

        def _start(self, phase: int, seconds: float) -> None:
            self._phase = phase
            self._deadline = deadline = self.loop.time() + seconds
            timer = self._timer
            if timer is None or timer.when() > deadline:
                if timer is not None:
                    timer.cancel()
                self._timer = self.loop.call_at(deadline, self._expire)

        def _stop_timer(self) -> None:
            self._phase = _IDLE
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

        def _expire(self) -> None:
            self._timer = None
            if self._phase == _IDLE:
                return  # the next request head arms it again
            if self.loop.time() < self._deadline:
                self._timer = self.loop.call_at(self._deadline, self._expire)
                return
            phase, self._phase = self._phase, _IDLE
            self._flush_out()
            if phase == _BODY and self.cycle is not None and self.cycle.response_started:
                self.transport.close()  # the application answered already (say, 413 mid-body): no second status
            else:
                _reply(self.transport, b"408 Request Timeout")

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if max_connections is not None and len(self.connections) > max_connections:
                _reply(transport, b"503 Service Unavailable")
                return
            self._head_bytes = 0
            self._out = Outbox(transport)
            self._start(_HEAD, header_timeout)

        def connection_lost(self, exc: Exception | None) -> None:
            self._stop_timer()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self.transport.is_closing():  # refused (503) or cut off (408/431): read no further
                return
            super().data_received(data)

        def on_message_begin(self) -> None:
            # the first byte of a request (also the next one on a keep-alive connection) starts its deadline
            super().on_message_begin()
            if self._phase != _HEAD:
                self._head_bytes = 0
                self._start(_HEAD, header_timeout)

        def on_url(self, url: bytes) -> None:
            self._count(len(url))
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._count(len(name) + len(value) + 4)
            super().on_header(name, value)

        def _count(self, n: int) -> None:
            self._head_bytes += n
            if self._head_bytes > max_header_bytes:
                self._stop_timer()
                self._flush_out()
                _reply(self.transport, b"431 Request Header Fields Too Large")

        def on_headers_complete(self) -> None:
            if self.transport.is_closing():
                self._stop_timer()
                return
            self._start(_BODY, body_timeout)  # ends at on_message_complete (at once for a bodiless request)
            super().on_headers_complete()
            cycle = self.cycle
            if cycle is not None and cycle.scope is self.scope:  # this request's cycle (not an upgrade's)
                if self._out is not None:
                    cycle.transport = self._out  # type: ignore[assignment]
                cycle.scope[HEAD_CHECKED] = max_header_bytes  # type: ignore[literal-required]

        def on_message_complete(self) -> None:
            self._phase = _IDLE
            super().on_message_complete()

        def shutdown(self) -> None:
            self._flush_out()  # a reply held in this tick leaves before uvicorn closes an idle connection
            super().shutdown()

        def send_400_response(self, msg: str) -> None:
            self._flush_out()
            super().send_400_response(msg)

        def timeout_keep_alive_handler(self) -> None:
            self._flush_out()
            super().timeout_keep_alive_handler()

    return GuardedHttpToolsProtocol


def default_max_connections() -> int:
    """Half the process's file-descriptor limit (the rest: upstream connections, files), at most 10,000."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return 10_000 if soft == resource.RLIM_INFINITY else max(16, min(10_000, soft // 2))


def http_protocol(limits: Any) -> type[HttpToolsProtocol]:
    cap = limits.max_connections
    return guarded_protocol(float(limits.header_timeout), int(limits.max_header_bytes), float(limits.body_timeout),
                            default_max_connections() if cap is None else int(cap))
