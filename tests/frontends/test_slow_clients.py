"""Slow or oversized request heads are cut off by the server, before the application runs."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from tests.support import stile_server


@pytest.fixture(scope="module")
def base() -> Iterator[str]:
    config = {"limits": {"header_timeout": 1.0, "max_header_bytes": 4096}, "virtual_servers": {}}
    with stile_server(config) as url:
        yield url


def _exchange(base: str, data: bytes, timeout: float = 10.0) -> bytes:
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(data)
        chunks = []
        while True:
            chunk = s.recv(4096)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
            if b"\r\n\r\n" in b"".join(chunks) and b"connection: close" not in b"".join(chunks).lower():
                return b"".join(chunks)


def test_an_incomplete_request_head_gets_408_after_the_header_timeout(base: str) -> None:
    reply = _exchange(base, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    assert reply.startswith(b"HTTP/1.1 408")


def test_an_oversized_request_head_gets_431(base: str) -> None:
    reply = _exchange(base, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 8000 + b"\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 431")


def test_a_normal_request_is_served_by_the_same_server(base: str) -> None:
    reply = _exchange(base, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 200")
