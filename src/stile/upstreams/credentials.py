"""What an upstream asks when it sends a request: the headers and env to use, and how to clean an answer.

The upstreams know nothing of the vault: the composition root passes a `Credentials` (the vault's
`VaultCredentials`), else `NO_CREDENTIALS` applies (configured headers and env as written, answers as is).
`Caller` carries who a call is for (the per-caller identity modes) and, back, which identity was used (audit).
Per-caller tokens that take I/O to obtain (token exchange, a user's OAuth token) are fetched by `prepare`
before the request and put into `caller.bearer`; `rejected` is told when the upstream answered 401 to it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from stile.wire.jsonrpc import Message


class Caller:
    """The user and agent one upstream call is made for; `used` is filled with the identity the call used."""

    __slots__ = ("agent", "bearer", "scope", "token", "used", "user")

    def __init__(self, user: str | None, agent: str | None, scope: str = "", token: str | None = None) -> None:
        self.user = user
        self.agent = agent
        self.scope = scope
        self.token = token  # the caller's validated incoming bearer token (token_exchange, passthrough) or None
        self.bearer: str | None = None  # the token `prepare` obtained for this upstream
        self.used: dict[str, Any] | None = None

    def __repr__(self) -> str:  # never the tokens
        return f"Caller(user={self.user!r}, agent={self.agent!r})"


class Credentials(Protocol):
    def headers(self, upstream: str, configured: Mapping[str, str],
                caller: Caller | None = None) -> Mapping[str, str]:
        """The headers to send (secrets resolved, an assertion added; not to be mutated); raises
        `UpstreamUnavailable`. Sets `caller.used`."""
        ...

    async def prepare(self, upstream: str, caller: Caller) -> None:
        """Obtain what this caller's request needs (sets `caller.bearer`); raises `UpstreamError` or
        `ConsentRequired`."""
        ...

    async def rejected(self, upstream: str, caller: Caller) -> bool:
        """The upstream answered 401 to `caller.bearer`: True when a fresh token is in `caller.bearer` (retry)."""
        ...

    def env(self, upstream: str, configured: Mapping[str, str]) -> dict[str, str]:
        """A stdio upstream's environment at (re)spawn, secrets resolved."""
        ...

    def scrub(self, upstream: str, msg: Message) -> Message:
        """An upstream's answer with every secret value (and its encodings) masked."""
        ...

    def scrub_text(self, upstream: str, text: str) -> str:
        """Text an upstream produced (a stdio server's stderr) with every secret value masked."""
        ...


SERVICE: dict[str, Any] = {"mode": "service"}  # shared: never mutated


class _None:
    def headers(self, upstream: str, configured: Mapping[str, str],
                caller: Caller | None = None) -> Mapping[str, str]:
        if caller is not None:
            caller.used = SERVICE
        return configured

    async def prepare(self, upstream: str, caller: Caller) -> None:
        return None

    async def rejected(self, upstream: str, caller: Caller) -> bool:
        return False

    def env(self, upstream: str, configured: Mapping[str, str]) -> dict[str, str]:
        return dict(configured)

    def scrub(self, upstream: str, msg: Message) -> Message:
        return msg

    def scrub_text(self, upstream: str, text: str) -> str:
        return text


NO_CREDENTIALS: Credentials = _None()
