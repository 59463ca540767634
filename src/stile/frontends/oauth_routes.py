"""The two browser routes of the `user_oauth` consent flow: `/oauth/consent/<link>` and `/oauth/callback`.

Thin: parsing (query string, cookies) and the HTTP answer; the checks live in `stile.vault.user_oauth`.
Answers are small HTML pages, or a 302 to the authorization server from the consent route only (never to a
URL taken from the request: no open redirect).
"""

from __future__ import annotations

from collections.abc import Mapping
from http.cookies import CookieError, SimpleCookie
from typing import Protocol
from urllib.parse import parse_qsl

from stile.frontends.asgi import Scope, Send, send_bytes, send_text

PREFIX = "/oauth/"
CONSENT = "/oauth/consent/"
CALLBACK = "/oauth/callback"
MAX_QUERY = 8 * 1024
_PAGE = b"text/html; charset=utf-8"
_HEADERS = [(b"cache-control", b"no-store"), (b"referrer-policy", b"no-referrer"),
            (b"x-frame-options", b"DENY"), (b"content-security-policy", b"default-src 'none'")]


class Page(Protocol):
    @property
    def status(self) -> int: ...

    @property
    def body(self) -> str: ...

    @property
    def location(self) -> str | None: ...

    @property
    def cookie(self) -> str | None: ...


class ConsentFlow(Protocol):
    async def consent(self, sealed: str, secure: bool) -> Page: ...

    async def callback(self, query: Mapping[str, str], cookies: Mapping[str, str]) -> Page: ...


def _cookies(header: str) -> dict[str, str]:
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(header[:8192])
    except CookieError:
        return {}
    return {k: m.value for k, m in jar.items()}


async def serve(flow: ConsentFlow | None, scope: Scope, path: str, headers: dict[str, str], send: Send,
                secure: bool) -> None:
    if flow is None:
        await send_text(send, 404, "no upstream uses identity: user_oauth")
        return
    if scope["method"] != "GET":
        await send_text(send, 405, "method not allowed")
        return
    raw_query: bytes = scope.get("query_string", b"")
    if len(raw_query) > MAX_QUERY:
        await send_text(send, 414, "query string too long")
        return
    if path.startswith(CONSENT) and "/" not in path[len(CONSENT):]:
        page = await flow.consent(path[len(CONSENT):], secure)
    elif path == CALLBACK:
        query: dict[str, str] = {}
        for key, value in parse_qsl(raw_query.decode("latin-1"), keep_blank_values=True):
            if key in query:  # a repeated code or state is refused, not guessed at
                await send_text(send, 400, f"repeated query parameter {key[:40]!r}")
                return
            query[key] = value
        page = await flow.callback(query, _cookies(headers.get("cookie", "")))
    else:
        await send_text(send, 404, "not found")
        return
    extra = list(_HEADERS)
    if page.location is not None:
        extra.append((b"location", page.location.encode()))
    if page.cookie is not None:
        extra.append((b"set-cookie", page.cookie.encode()))
    await send_bytes(send, page.status, page.body.encode(), extra, content_type=_PAGE)
