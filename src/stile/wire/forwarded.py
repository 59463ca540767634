"""The client address of an HTTP request: the TCP peer, or what a trusted proxy says it forwarded.

`X-Forwarded-For` / `Forwarded` are client input: anyone can send them. They are believed only when
the TCP peer is in `trusted_proxies` (CIDRs), and then only as far as the chain is trusted: the client
is the right-most hop that is not itself a trusted proxy (every proxy appends the address it saw, so
everything left of that hop was written by the client). `X-Forwarded-For` is read when present, else
`Forwarded` (RFC 7239 `for=`); a proxy that only speaks `Forwarded` must drop a client's X-Forwarded-For.

The frontend puts the peer into the request's header map under `PEER` (a name no HTTP header can
have); the address is resolved lazily, only when something records it (audit events, /metrics access).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network

PEER = ":peer"  # ':' is not a token character: no client can send a header of this name
MAX_HOPS = 32  # hops of a forwarded chain that are looked at (right to left)
MAX_ADDRESS = 64  # characters of a returned address
_CACHE = 4096


def _host(value: str) -> str:
    """`1.2.3.4`, `1.2.3.4:80`, `[2001:db8::1]:443`, `2001:db8::1`, `"[::1]"` -> the bare address."""
    v = value.strip().strip('"')
    if v.startswith("["):
        end = v.find("]")
        return v[1:end] if end > 0 else v
    if v.count(":") == 1:
        return v.split(":", 1)[0]
    return v


def forwarded_hops(headers: Mapping[str, str]) -> list[str]:
    """The forwarded client chain, left (original client) to right (nearest proxy); at most MAX_HOPS."""
    xff = headers.get("x-forwarded-for")
    if xff is not None:
        hops = [_host(part) for part in xff.split(",")[-MAX_HOPS:]]
    else:
        hops = []
        for element in headers.get("forwarded", "").split(",")[-MAX_HOPS:]:
            for pair in element.split(";"):
                name, _, value = pair.partition("=")
                if name.strip().lower() == "for":
                    hops.append(_host(value))
    return [h for h in hops if h]


def is_loopback(address: str | None) -> bool:
    if not address:
        return False
    try:
        ip = ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback
    return ip.is_loopback


class ClientAddress:
    """`resolver(headers)` -> the client address of a request (see the module docstring)."""

    def __init__(self, trusted_proxies: Sequence[str] = ()) -> None:
        self.networks = tuple(ip_network(cidr, strict=False) for cidr in trusted_proxies)
        self._trusted: dict[str, bool] = {}

    def trusted(self, address: str) -> bool:
        hit = self._trusted.get(address)
        if hit is None:
            try:
                ip: IPv4Address | IPv6Address | None = ip_address(address)
            except ValueError:
                ip = None
            if isinstance(ip, IPv6Address) and ip.ipv4_mapped is not None:
                ip = ip.ipv4_mapped
            hit = ip is not None and any(ip.version == net.version and ip in net for net in self.networks)
            if len(self._trusted) < _CACHE:
                self._trusted[address] = hit
        return hit

    def __call__(self, headers: Mapping[str, str]) -> str | None:
        peer = headers.get(PEER)
        if not peer or not self.networks or not self.trusted(peer):
            return peer or None
        hops = forwarded_hops(headers)
        for hop in reversed(hops):
            if not self.trusted(hop):
                return hop[:MAX_ADDRESS]
        return hops[0][:MAX_ADDRESS] if hops else peer  # every hop is a trusted proxy: the left-most one
