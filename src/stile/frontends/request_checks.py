"""Checks on the raw request that the header map cannot make: repeated credentials, the body's media type.

`header_map` keeps the last of repeated headers, so two `Authorization` (or `X-API-Key`) headers would
silently authenticate as whichever came last (a proxy adding one, a client adding another): such a
request is refused instead. POST bodies to the MCP endpoints must be `application/json` (parameters such
as `charset` allowed): forms, multipart, text/plain or no Content-Type get 415, so a browser's "simple"
cross-site form POST never reaches JSON-RPC parsing.
"""

from __future__ import annotations

from collections.abc import Iterable

from stile.wire.errors import ClientError


class UnsupportedMediaType(ClientError):
    http_status = 415

    def __init__(self) -> None:
        super().__init__("Unsupported Media Type: Content-Type must be application/json")


def repeated_credential(raw: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The name of a credential header sent more than once, else None (ASGI header names are lowercase)."""
    auth = key = 0
    for name, _ in raw:
        if name == b"authorization":
            auth += 1
        elif name == b"x-api-key":
            key += 1
    if auth > 1:
        return "authorization"
    return "x-api-key" if key > 1 else None


def is_json(content_type: str | None) -> bool:
    """`application/json`, with or without parameters, any case."""
    if not content_type:
        return False
    return content_type.partition(";")[0].strip().lower() == "application/json"
