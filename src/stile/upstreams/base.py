"""The Upstream seam shared by every transport, and the era-adaptation every transport needs.

An upstream call is described by `CallOptions`: who to tell about progress and log messages
(`on_message`), who answers server->client requests (`on_request`), and the calling client's
declared capabilities (forwarded as `_meta` to modern upstreams). Transports return the raw
JSON-RPC response dict (result or error) and raise `UpstreamError` subclasses for local failures.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from stile import __version__
from stile.config.model import UpstreamConfig
from stile.upstreams.causes import target_of
from stile.upstreams.credentials import Caller
from stile.wire import eras
from stile.wire.errors import MethodNotFound, UpstreamUnavailable
from stile.wire.jsonrpc import Message

log = logging.getLogger("stile.upstream")

Era = Literal["legacy", "modern"]
OnMessage = Callable[[Message], Coroutine[Any, Any, None]]
OnRequest = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]
OnNotification = Callable[[str, Message], None]

CLIENT_INFO = {"name": "stile", "version": __version__}
# What Stile declares to legacy upstreams: it can relay all of these to capable clients.
LEGACY_CLIENT_CAPS: dict[str, Any] = {
    "sampling": {},
    "elicitation": {"form": {}, "url": {}},
    "roots": {"listChanged": True},
}


async def _no_message(msg: Message) -> None:
    return None


async def _no_request(method: str, params: dict[str, Any]) -> dict[str, Any]:
    raise MethodNotFound(f"the client cannot answer {method}")


@dataclass(frozen=True, slots=True)
class CallOptions:
    on_message: OnMessage = _no_message
    on_request: OnRequest = _no_request
    client_caps: dict[str, Any] = field(default_factory=dict)
    client_info: dict[str, Any] | None = None
    log_level: str | None = None
    client_era: Era | None = None  # the calling client's era; dual-era upstreams are spoken to in it
    progress_token: Any = None  # the upstream-side token, set by the router when the client asked
    extra_headers: dict[str, str] = field(default_factory=dict)  # Mcp-Param-* for modern upstreams
    trace_headers: dict[str, str] = field(default_factory=dict)  # W3C traceparent/tracestate of Stile's hop
    affinity: str | None = None  # the client's session / principal: `balance: session` keeps it on one endpoint
    caller: Caller | None = None  # who the call is for (identity: assertion), and back which identity it used


DEFAULT_OPTIONS = CallOptions()


class Upstream(Protocol):
    name: str
    target: str  # its URL (no user-info, no query) or command line, for operators' messages
    era: Era | None
    server_info: dict[str, Any]
    capabilities: dict[str, Any]
    instructions: str | None
    on_notification: OnNotification

    async def start(self) -> None: ...

    async def request(self, method: str, params: dict[str, Any], opts: CallOptions = ...) -> Message: ...

    async def notify(self, method: str, params: dict[str, Any]) -> None: ...

    async def aclose(self) -> None: ...

    @property
    def healthy(self) -> bool: ...

    @property
    def last_error(self) -> str | None: ...


DEFAULT_MAX_RESPONSE = 16 * 1024 * 1024


class UpstreamBase:
    """State every transport keeps: identity, negotiated surface, health.

    `max_response` (`limits.max_upstream_response_bytes`) caps one response body, SSE event or stdio line.
    """

    def __init__(self, name: str, cfg: UpstreamConfig, max_response: int = DEFAULT_MAX_RESPONSE) -> None:
        self.name = name
        self.cfg = cfg
        self.max_response = max_response
        self.era: Era | None = None if cfg.era == "auto" else cfg.era
        self.server_info: dict[str, Any] = {}
        self.capabilities: dict[str, Any] = {}
        self.instructions: str | None = None
        self.on_notification: OnNotification = ignore_notification
        self.initialize_count = 0
        self._closed = False
        self._last_error: str | None = None  # for operators: target and cause (see upstreams/causes.py)
        self.target = target_of(cfg)

    @property
    def last_error(self) -> str | None:
        return self._last_error

    def unavailable(self, cause: str, detail: str | None = None) -> UpstreamUnavailable:
        """Record a failure (`detail`, else `cause`, after the target) and build the client's error (`cause`)."""
        self._last_error = f"{self.target}: {detail or cause}"
        return UpstreamUnavailable(self.name, cause, detail=self._last_error)

    def adopt_initialize(self, result: dict[str, Any]) -> None:
        """Record what a legacy `initialize` answered."""
        self.capabilities = result.get("capabilities") or {}
        self.server_info = result.get("serverInfo") or {}
        self.instructions = result.get("instructions")
        self.initialize_count += 1

    def adopt_discover(self, result: dict[str, Any]) -> None:
        """Record what a modern `server/discover` answered."""
        self.era = "modern"
        self.capabilities = result.get("capabilities") or {}
        self.server_info = (result.get("_meta") or {}).get(eras.META_SERVER_INFO) or {}
        self.instructions = result.get("instructions")


class IdSource:
    """Upstream request ids: unique per upstream connection, never reused."""

    def __init__(self, prefix: str = "s") -> None:
        self._counter = itertools.count(1)
        self._prefix = prefix

    def next(self) -> str:
        return f"{self._prefix}{next(self._counter)}"


def modern_meta(opts: CallOptions) -> dict[str, Any]:
    meta: dict[str, Any] = {
        eras.META_VERSION: eras.MODERN,
        eras.META_CAPS: narrow_caps(opts.client_caps),
        eras.META_CLIENT_INFO: opts.client_info or CLIENT_INFO,
    }
    if opts.log_level:
        meta[eras.META_LOG_LEVEL] = opts.log_level
    return meta


def narrow_caps(caps: dict[str, Any]) -> dict[str, Any]:
    """Forward only client capabilities Stile can relay."""
    return {k: v for k, v in caps.items() if k in ("sampling", "elicitation", "roots", "extensions")}


def adapt_params(era: Era, params: dict[str, Any], opts: CallOptions) -> dict[str, Any]:
    """Add or strip the per-request `_meta` keys the upstream's era expects."""
    meta = params.get("_meta")
    if opts.trace_headers and isinstance(meta, dict) and "tracestate" in meta:
        meta = {k: v for k, v in meta.items() if k != "tracestate"}  # Stile's hop carries the (valid) one
    if era == "modern":
        new_meta = dict(meta) if isinstance(meta, dict) else {}
        new_meta.update(modern_meta(opts))
        new_meta.update(opts.trace_headers)
        return {**params, "_meta": new_meta}
    if opts.trace_headers:  # OpenTelemetry's MCP conventions carry trace context in _meta on every transport
        meta = {**meta, **opts.trace_headers} if isinstance(meta, dict) else dict(opts.trace_headers)
        params = {**params, "_meta": meta}
    if isinstance(meta, dict) and any(k.startswith("io.modelcontextprotocol/") for k in meta):
        kept = {k: v for k, v in meta.items() if not k.startswith("io.modelcontextprotocol/")}
        out = {k: v for k, v in params.items() if k != "_meta"}
        if kept:
            out["_meta"] = kept
        return out
    return params


def initialize_params() -> dict[str, Any]:
    return {
        "protocolVersion": eras.LATEST_LEGACY,
        "capabilities": LEGACY_CLIENT_CAPS,
        "clientInfo": CLIENT_INFO,
    }


def discover_params() -> dict[str, Any]:
    return {"_meta": modern_meta(DEFAULT_OPTIONS)}


def is_modern_discover(msg: Message) -> bool:
    res = msg.get("result")
    return isinstance(res, dict) and eras.MODERN in (res.get("supportedVersions") or [])


def ignore_notification(name: str, msg: Message) -> None:
    return None
