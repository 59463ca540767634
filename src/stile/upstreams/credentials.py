"""What an upstream asks when it sends a request: the headers and env to use, and how to clean an answer.

The upstreams know nothing of the vault: the composition root passes a `Credentials` (the vault's
`VaultCredentials`), else `NO_CREDENTIALS` applies (configured headers and env as written, answers as is).
`Caller` carries who a call is for (the assertion identity mode) and, back, which identity was used (audit).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from stile.wire.jsonrpc import Message


class Caller:
    """The user and agent one upstream call is made for; `used` is filled with the identity the call used."""

    __slots__ = ("agent", "scope", "used", "user")

    def __init__(self, user: str | None, agent: str | None, scope: str = "") -> None:
        self.user = user
        self.agent = agent
        self.scope = scope
        self.used: dict[str, Any] | None = None


class Credentials(Protocol):
    def headers(self, upstream: str, configured: Mapping[str, str],
                caller: Caller | None = None) -> Mapping[str, str]:
        """The headers to send (secrets resolved, an assertion added; not to be mutated); raises
        `UpstreamUnavailable`. Sets `caller.used`."""
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

    def env(self, upstream: str, configured: Mapping[str, str]) -> dict[str, str]:
        return dict(configured)

    def scrub(self, upstream: str, msg: Message) -> Message:
        return msg

    def scrub_text(self, upstream: str, text: str) -> str:
        return text


NO_CREDENTIALS: Credentials = _None()
