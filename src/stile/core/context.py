"""The per-request context every policy sees, and the channel back to the client."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

from stile.wire.errors import MethodNotFound
from stile.wire.jsonrpc import Message

if TYPE_CHECKING:
    from stile.core.catalog import View

ClientEra = Literal["legacy", "modern"]


class ClientChannel(Protocol):
    """How the router talks back to the calling client during one request."""

    @property
    def can_request(self) -> bool:
        """True when server->client requests can be sent (legacy streams)."""
        ...

    async def notify(self, msg: Message) -> None: ...

    async def request(self, method: str, params: dict[str, Any]) -> dict[str, Any]: ...


class NullChannel:
    can_request = False

    async def notify(self, msg: Message) -> None:
        return None

    async def request(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
            raise MethodNotFound(f"client cannot answer {method} here")


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the agent (key name, token client id) and the user it acts for (token subject)."""

    agent: str | None = None
    user: str | None = None
    roles: tuple[str, ...] = ()
    method: str = "none"  # none | api_key | jwt
    email: str | None = None
    claims: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def as_cel(self) -> dict[str, Any]:
        return {"agent": self.agent or "", "user": self.user or "", "roles": list(self.roles),
                "method": self.method, "email": self.email or "", "claims": self.claims}


ANONYMOUS = Principal()


class RequestStats:
    """What one request measured on its way (mutable, unlike the context that carries it).

    Set by the router (time spent waiting on upstreams, the upstream's cache hints), tracing (trace
    context), access control (the caller's view) and the response cache (hit or miss); read by
    metrics and the audit trail when the request completes.
    """

    __slots__ = ("cache", "cache_hint", "identity", "span", "trace_id", "traceparent", "tracestate",
                 "upstream_seconds", "view")

    def __init__(self) -> None:
        self.upstream_seconds = 0.0
        self.traceparent: str | None = None  # W3C trace context of this request, as sent upstream
        self.tracestate: str | None = None
        self.trace_id: str | None = None
        self.span: Any = None  # the server span when tracing is enabled
        self.view: View | None = None  # the caller's narrowed view, once access control computed it
        self.cache: str | None = None  # "hit" / "miss" when the response cache looked this request up
        self.cache_hint: tuple[Any, Any] | None = None  # the upstream result's (ttlMs, cacheScope), when it sent one
        self.identity: dict[str, Any] | None = None  # the identity the upstream call used (mode, subject, token id)


@dataclass(frozen=True, slots=True)
class CallContext:
    virtual_server: str
    method: str
    params: dict[str, Any]
    request_id: Any
    era: ClientEra
    protocol_version: str
    client_caps: dict[str, Any] = field(default_factory=dict)
    client_info: dict[str, Any] | None = None
    log_level: str | None = None
    principal: Principal = ANONYMOUS
    channel: ClientChannel = field(default_factory=NullChannel)
    headers: Mapping[str, str] = field(default_factory=dict)
    session_id: str | None = None
    view: View | None = None  # the caller's view when access control narrowed it (else the virtual server's)
    stats: RequestStats = field(default_factory=RequestStats)

    # Hot-path copies: dataclasses.replace costs ~3.5 µs a call; these plain constructors ~1 µs.
    def with_view(self, view: View) -> CallContext:
        return CallContext(self.virtual_server, self.method, self.params, self.request_id, self.era,
                           self.protocol_version, self.client_caps, self.client_info, self.log_level, self.principal,
                           self.channel, self.headers, self.session_id, view, self.stats)

    def with_channel(self, channel: ClientChannel) -> CallContext:
        return CallContext(self.virtual_server, self.method, self.params, self.request_id, self.era,
                           self.protocol_version, self.client_caps, self.client_info, self.log_level, self.principal,
                           channel, self.headers, self.session_id, self.view, self.stats)


Reply = Message  # a JSON-RPC response body: {"result": ...} or {"error": ...} (id added by the frontend)
CallNext = Callable[[CallContext], Awaitable[Reply]]
