"""Front-door checks on the headers Stile builds URLs and challenges from: Host and Origin.

A Host header is `host[:port]` (RFC 9110 §7.2): a DNS name / IPv4 address, or an IPv6 literal in
brackets, and an optional port. Anything else (quotes, spaces, slashes, `@`, a bad port) is refused
before the value reaches a URL (the token audience, resource metadata, a WWW-Authenticate challenge).
"""

from __future__ import annotations

import re
from urllib.parse import SplitResult, urlsplit

_HOST = re.compile(r"(?:[A-Za-z0-9._~-]+|\[[0-9A-Fa-f:.]+\])(?::([0-9]{1,5}))?", re.ASCII)


_SEEN: dict[str, bool] = {}  # the few Host values a gateway sees, answered without the regex
_SEEN_MAX = 256


def valid_host(value: str) -> bool:
    """`host[:port]` with only the characters a host name or an IPv6 literal can hold; port 0..65535."""
    known = _SEEN.get(value)
    if known is not None:
        return known
    ok = check_host(value)
    if len(_SEEN) >= _SEEN_MAX:
        _SEEN.clear()  # many distinct values (a scan): start over, never grow
    _SEEN[value] = ok
    return ok


def check_host(value: str) -> bool:
    """`valid_host` without the memo."""
    match = _HOST.fullmatch(value)
    return match is not None and (match.group(1) is None or int(match.group(1)) <= 65535)


def parse_origin(origin: str) -> SplitResult | None:
    """The Origin header split like a URL, or None when it is no URL at all (e.g. `http://[`)."""
    try:
        parts = urlsplit(origin)
        parts.port  # noqa: B018 - raises ValueError on a non-numeric or out-of-range port
    except ValueError:
        return None
    return parts


def quoted(value: str) -> str:
    """`value` as an RFC 9110 quoted-string body: backslash and double quote escaped, control bytes dropped."""
    clean = "".join(ch for ch in value if ch >= " " and ch != "\x7f")
    return clean.replace("\\", "\\\\").replace('"', '\\"')
