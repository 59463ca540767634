"""Slow, oversized or too many clients are cut off by the server, before the application runs."""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Iterator

import pytest

from tests.support import stile_server

BODY_TIMEOUT = 0.5


@pytest.fixture(scope="module")
def base() -> Iterator[str]:
    config = {"limits": {"header_timeout": 1.0, "max_header_bytes": 4096, "body_timeout": BODY_TIMEOUT},
              "virtual_servers": {"main": {"auth": "none"}}}
    with stile_server(config) as url:
        yield url


def _addr(base: str) -> tuple[str, int]:
    host, port = base.removeprefix("http://").split(":")
    return host, int(port)


def _read_reply(s: socket.socket) -> bytes:
    chunks = []
    while True:
        chunk = s.recv(4096)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        if b"\r\n\r\n" in b"".join(chunks) and b"connection: close" not in b"".join(chunks).lower():
            return b"".join(chunks)


def _read_response(s: socket.socket) -> bytes:
    """One whole response with a content-length body (so the next one on the connection starts clean)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(4096)
        if not chunk:
            return data
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    while len(rest) < length and (chunk := s.recv(4096)):
        rest += chunk
    return head + b"\r\n\r\n" + rest


def _exchange(base: str, data: bytes, timeout: float = 10.0) -> bytes:
    with socket.create_connection(_addr(base), timeout=timeout) as s:
        s.sendall(data)
        return _read_reply(s)


def test_an_incomplete_request_head_gets_408_after_the_header_timeout(base: str) -> None:
    reply = _exchange(base, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    assert reply.startswith(b"HTTP/1.1 408")


def test_an_oversized_request_head_gets_431(base: str) -> None:
    reply = _exchange(base, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 8000 + b"\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 431")


def test_a_normal_request_is_served_by_the_same_server(base: str) -> None:
    reply = _exchange(base, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 200")


def _post_head(length: int) -> bytes:
    return (b"POST /mcp/main HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Accept: application/json, text/event-stream\r\nContent-Length: " + str(length).encode() + b"\r\n\r\n")


def test_a_request_body_that_stops_arriving_gets_408_after_the_body_timeout(base: str) -> None:
    start = time.monotonic()
    reply = _exchange(base, _post_head(1000) + b'{"jsonrpc":', timeout=10.0)
    assert reply.startswith(b"HTTP/1.1 408"), reply
    assert time.monotonic() - start < 5.0


def test_a_body_trickling_in_byte_by_byte_is_cut_off_by_the_body_timeout(base: str) -> None:
    """Each byte arriving does not extend the deadline: the whole body has `body_timeout` seconds."""
    with socket.create_connection(_addr(base), timeout=10.0) as s:
        s.sendall(_post_head(100_000))
        start = time.monotonic()
        while time.monotonic() - start < 10.0:
            readable, _, _ = select.select([s], [], [], 0.05)  # wait for the server's answer, one byte per turn
            if readable:
                break
            try:
                s.sendall(b" ")
            except OSError:
                break
        reply = _read_reply(s)
    assert reply.startswith(b"HTTP/1.1 408"), reply
    assert time.monotonic() - start < 5.0


def test_a_complete_body_is_answered_and_the_connection_stays_usable(base: str) -> None:
    body = b'{"jsonrpc":"2.0","id":1,"method":"ping"}'
    with socket.create_connection(_addr(base), timeout=10.0) as s:
        for _ in range(2):
            s.sendall(_post_head(len(body)) + body)
            reply = _read_response(s)
            assert reply.startswith(b"HTTP/1.1 "), reply
            assert not reply.startswith(b"HTTP/1.1 408"), reply


@pytest.fixture(scope="module")
def capped() -> Iterator[str]:
    config = {"limits": {"max_connections": 3}, "virtual_servers": {}}
    with stile_server(config) as url:
        yield url


def _healthz(s: socket.socket) -> bytes:
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    return _read_response(s)


def test_connections_beyond_max_connections_get_503_and_the_others_keep_working(capped: str) -> None:
    held = [socket.create_connection(_addr(capped), timeout=10.0) for _ in range(3)]
    try:
        for s in held:  # each is known to the server before the next one arrives
            assert _healthz(s).startswith(b"HTTP/1.1 200")
        start = time.monotonic()
        with socket.create_connection(_addr(capped), timeout=10.0) as extra:
            reply = _read_reply(extra)
        assert reply.startswith(b"HTTP/1.1 503"), reply
        assert time.monotonic() - start < 5.0
        for s in held:
            assert _healthz(s).startswith(b"HTTP/1.1 200")
    finally:
        for s in held:
            s.close()
    deadline = time.monotonic() + 10.0  # closed ones free their slots (once the server has seen the closes)
    while True:
        with socket.create_connection(_addr(capped), timeout=10.0) as again:
            reply = _healthz(again)
        if reply.startswith(b"HTTP/1.1 200") or time.monotonic() > deadline:
            break
    assert reply.startswith(b"HTTP/1.1 200"), reply


def test_on_a_keep_alive_connection_the_next_request_gets_its_own_deadlines(base: str) -> None:
    body = b'{"jsonrpc":"2.0","id":1,"method":"ping"}'
    with socket.create_connection(_addr(base), timeout=10.0) as s:
        s.sendall(_post_head(len(body)) + body)
        first = _read_response(s)
        assert first.startswith(b"HTTP/1.1 ") and not first.startswith(b"HTTP/1.1 408"), first
        start = time.monotonic()
        s.sendall(_post_head(500) + b"{")  # the second request's body stalls
        second = b""
        while b"408" not in second:
            chunk = s.recv(4096)
            if not chunk:
                break
            second += chunk
    assert b"HTTP/1.1 408" in second, second
    assert time.monotonic() - start < 5.0
