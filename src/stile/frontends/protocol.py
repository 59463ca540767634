"""uvicorn's httptools protocol with two slow-client defences uvicorn lacks.

- **Header-receipt timeout**: a connection must deliver a complete request head within
  `header_timeout` seconds of connecting (or of starting the next request), else it gets
  `408 Request Timeout` and is closed (slowloris).
- **Header size cap**: a request head larger than `max_header_bytes` gets `431` and is closed
  before the application sees it.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


def _reply(transport: asyncio.Transport, status: bytes) -> None:
    if not transport.is_closing():  # uvloop transports are not asyncio.WriteTransport subclasses
        body = status.split(b" ", 1)[1]
        transport.write(b"HTTP/1.1 " + status + b"\r\ncontent-type: text/plain\r\ncontent-length: "
                        + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n" + body)
        transport.close()


def guarded_protocol(header_timeout: float, max_header_bytes: int) -> type[HttpToolsProtocol]:
    class GuardedHttpToolsProtocol(HttpToolsProtocol):
        _head_timer: asyncio.TimerHandle | None = None
        _head_bytes = 0
        _in_head = False

        def _arm(self) -> None:
            self._disarm()
            self._in_head = True
            self._head_bytes = 0
            self._head_timer = self.loop.call_later(header_timeout, self._head_timeout)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timeout(self) -> None:
            self._head_timer = None
            if self._in_head:
                _reply(self.transport, b"408 Request Timeout")

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def on_message_begin(self) -> None:
            # the first byte of a request (also the next one on a keep-alive connection) starts its deadline
            super().on_message_begin()
            if not self._in_head:
                self._arm()

        def on_url(self, url: bytes) -> None:
            self._count(len(url))
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._count(len(name) + len(value) + 4)
            super().on_header(name, value)

        def _count(self, n: int) -> None:
            self._head_bytes += n
            if self._head_bytes > max_header_bytes:
                self._disarm()
                self._in_head = False
                _reply(self.transport, b"431 Request Header Fields Too Large")

        def on_headers_complete(self) -> None:
            self._in_head = False
            self._disarm()
            if self.transport.is_closing():
                return
            super().on_headers_complete()

    return GuardedHttpToolsProtocol


def http_protocol(limits: Any) -> type[HttpToolsProtocol]:
    return guarded_protocol(float(limits.header_timeout), int(limits.max_header_bytes))
