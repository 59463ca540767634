"""The client address: the TCP peer, unless the peer is a trusted proxy; then the right-most untrusted hop."""

from __future__ import annotations

import pytest

from stile.wire.forwarded import MAX_HOPS, PEER, ClientAddress, forwarded_hops, is_loopback

PROXIES = ClientAddress(["10.0.0.0/8", "127.0.0.1/32", "fd00::/8"])


def test_without_trusted_proxies_the_peer_is_the_client_whatever_the_headers_say() -> None:
    resolve = ClientAddress()
    assert resolve({PEER: "127.0.0.1", "x-forwarded-for": "6.6.6.6", "forwarded": "for=6.6.6.7"}) == "127.0.0.1"
    assert resolve({"x-forwarded-for": "6.6.6.6"}) is None  # no peer known (e.g. a unix socket)


def test_an_untrusted_peer_is_the_client_even_when_proxies_are_configured() -> None:
    assert PROXIES({PEER: "192.0.2.1", "x-forwarded-for": "6.6.6.6"}) == "192.0.2.1"


@pytest.mark.parametrize(("xff", "client"), [
    ("6.6.6.6", "6.6.6.6"),
    ("6.6.6.6, 203.0.113.5", "203.0.113.5"),  # 6.6.6.6 was written by 203.0.113.5's client: not believed
    ("6.6.6.6, 203.0.113.5, 10.1.1.1, 127.0.0.1", "203.0.113.5"),  # through two trusted hops
    ("203.0.113.5:4711", "203.0.113.5"),
    ("[2001:db8::1]:443, fd00::2", "2001:db8::1"),
    ("10.0.0.7, 10.0.0.8", "10.0.0.7"),  # every hop trusted: the left-most
    ("", "127.0.0.1"),
])
def test_behind_a_trusted_proxy_the_right_most_untrusted_hop_is_the_client(xff: str, client: str) -> None:
    assert PROXIES({PEER: "127.0.0.1", "x-forwarded-for": xff}) == client


def test_forwarded_is_read_when_there_is_no_x_forwarded_for() -> None:
    forwarded = 'for=192.0.2.60;proto=http;by=203.0.113.43, For="[2001:db8:cafe::17]:4711"'
    headers = {PEER: "10.0.0.1", "forwarded": forwarded}
    assert forwarded_hops(headers) == ["192.0.2.60", "2001:db8:cafe::17"]
    assert PROXIES(headers) == "2001:db8:cafe::17"
    both = {**headers, "x-forwarded-for": "198.51.100.1"}
    assert PROXIES(both) == "198.51.100.1"


def test_a_long_forged_chain_costs_a_bounded_amount_and_yields_a_short_value() -> None:
    chain = ", ".join(["6.6.6.6"] * 10_000 + ["x" * 10_000])
    assert len(forwarded_hops({"x-forwarded-for": chain})) == MAX_HOPS
    assert len(PROXIES({PEER: "127.0.0.1", "x-forwarded-for": chain}) or "") == 64


def test_an_ipv4_mapped_peer_matches_ipv4_networks() -> None:
    assert PROXIES({PEER: "::ffff:10.2.3.4", "x-forwarded-for": "198.51.100.9"}) == "198.51.100.9"


@pytest.mark.parametrize(("address", "loopback"), [
    ("127.0.0.1", True), ("127.8.9.10", True), ("::1", True), ("::ffff:127.0.0.1", True),
    ("10.0.0.1", False), ("203.0.113.5", False), ("localhost", False), ("", False), (None, False),
])
def test_loopback(address: str | None, loopback: bool) -> None:
    assert is_loopback(address) is loopback
