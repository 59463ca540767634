"""The Stile error tree and its wire mapping.

    StileError                 (jsonrpc_code, http_status; safe message shown to the client)
    +-- ClientError            the client sent something wrong (400-class)
    |   +-- ParseError         -32700: body is not one JSON object
    |   +-- InvalidRequest     -32600: JSON-RPC envelope is malformed
    |   +-- MethodNotFound     -32601
    |   +-- InvalidParams      -32602 (also unknown tool, bad cursor, missing _meta)
    |   +-- HeaderMismatch     -32020: Mcp-* header disagrees with the body
    |   +-- UnsupportedVersion -32022
    |   +-- SessionNotFound    legacy session id unknown or expired (HTTP 404)
    +-- ReplicaUnreachable     -32004: the state a request needs is on another replica that cannot be reached
    +-- UpstreamError          the upstream failed; message names the upstream, never its secrets
        +-- UpstreamUnavailable  connection refused / reset / process dead
        +-- UpstreamTimeout      no answer within the upstream's timeout
        +-- UpstreamTooLarge     a response (body, SSE event, stdio line) over limits.max_upstream_response_bytes
    +-- ConsentRequired        -32042: the user must approve an upstream (user_oauth) at a URL first

Errors returned *by* an upstream (JSON-RPC error objects) are not exceptions: they pass through
as responses. Exceptions here are always generated locally, so a client can tell them apart.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
RESOURCE_NOT_FOUND_LEGACY = -32002
HEADER_MISMATCH = -32020
MISSING_CLIENT_CAPABILITY = -32021
UNSUPPORTED_PROTOCOL_VERSION = -32022
# Implementation-defined range (-32000..-32019): locally generated upstream failures.
UPSTREAM_UNAVAILABLE = -32001
UPSTREAM_TIMEOUT = -32003
REPLICA_UNREACHABLE = -32004


class StileError(Exception):
    jsonrpc_code: int = INTERNAL_ERROR
    http_status: int = 500
    recorded: bool = False  # already accounted for (audit, metrics) by the policy chain

    def __init__(self, message: str, *, data: Any = None, http_status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.data = data
        if http_status is not None:
            self.http_status = http_status

    def http_headers(self) -> list[tuple[bytes, bytes]]:
        """Extra HTTP response headers when this error is the HTTP answer (e.g. Retry-After on a 429)."""
        return []

    def to_error(self) -> dict[str, Any]:
        err: dict[str, Any] = {"code": self.jsonrpc_code, "message": self.message}
        if self.data is not None:
            err["data"] = self.data
        return err


class ClientError(StileError):
    jsonrpc_code = INVALID_REQUEST
    http_status = 400


class ParseError(ClientError):
    jsonrpc_code = PARSE_ERROR


class InvalidRequest(ClientError):
    jsonrpc_code = INVALID_REQUEST


class MethodNotFound(ClientError):
    jsonrpc_code = METHOD_NOT_FOUND
    http_status = 200


class InvalidParams(ClientError):
    jsonrpc_code = INVALID_PARAMS
    http_status = 200


class HeaderMismatch(ClientError):
    jsonrpc_code = HEADER_MISMATCH


class UnsupportedVersion(ClientError):
    jsonrpc_code = UNSUPPORTED_PROTOCOL_VERSION


class SessionNotFound(ClientError):
    jsonrpc_code = INVALID_REQUEST
    http_status = 404


class ReplicaUnreachable(StileError):
    """What this request continues (a pending call, a relayed request) is held by another replica, and that one
    cannot be reached now: the bus is down, the replica died or did not answer in time. Retryable: the
    message says how (usually: send the original request again)."""

    jsonrpc_code = REPLICA_UNREACHABLE
    http_status = 200

    def __init__(self, message: str) -> None:
        super().__init__(message, data={"retryable": True})


def remote_error(error: dict[str, Any], http_status: int | None = None) -> StileError:
    """A StileError raised on another replica, rebuilt from its `to_error()` form."""
    exc = StileError(str(error.get("message", "error on another replica"))[:1024], data=error.get("data"),
                     http_status=http_status if isinstance(http_status, int) else 200)
    code = error.get("code")
    exc.jsonrpc_code = code if isinstance(code, int) else INTERNAL_ERROR
    return exc


class UpstreamError(StileError):
    jsonrpc_code = UPSTREAM_UNAVAILABLE
    http_status = 200

    def __init__(self, upstream: str, message: str, *, detail: str | None = None) -> None:
        super().__init__(f"upstream {upstream!r}: {message}", data={"upstream": upstream})
        self.upstream = upstream
        self.cause = message
        self.detail = detail  # for operators (logs, `stile check`, /readyz details): URL/command, stderr


class UpstreamUnavailable(UpstreamError):
    jsonrpc_code = UPSTREAM_UNAVAILABLE


class UpstreamTimeout(UpstreamError):
    jsonrpc_code = UPSTREAM_TIMEOUT


class UpstreamTooLarge(UpstreamError):
    jsonrpc_code = UPSTREAM_UNAVAILABLE

    def __init__(self, upstream: str, limit: int, what: str = "response") -> None:
        super().__init__(upstream, f"{what} larger than limits.max_upstream_response_bytes ({limit} bytes)")
        self.limit = limit


URL_ELICITATION_REQUIRED = -32042


class ConsentRequired(StileError):
    """The user must approve access to an upstream in a browser first (`identity: user_oauth`).

    As an error it is MCP's URL-elicitation-required error (-32042) carrying the consent URL; the router turns
    it into a URL-mode elicitation (legacy clients) or `input_required` (2026-07-28 clients) when it can."""

    jsonrpc_code = URL_ELICITATION_REQUIRED
    http_status = 200

    def __init__(self, upstream: str, url: str, elicitation_id: str,
                 wait: Callable[[], Awaitable[bool]] | None = None) -> None:
        self.upstream = upstream
        self.url = url
        self.elicitation_id = elicitation_id
        self.wait = wait  # resolves True once this consent completed (bounded by the link's lifetime)
        self.prompt = f"Sign in to {upstream!r} to let the agent act for you there"
        # the message (what audit and traces record) leaves the link out: it is for the user alone
        super().__init__(f"upstream {upstream!r}: the user has not authorized access yet",
                         data={"upstream": upstream, "elicitations": [self.elicitation()]})

    def to_error(self) -> dict[str, Any]:
        err = super().to_error()
        err["message"] = f"{self.message}; open {self.url} and retry"  # for clients that show only the message
        return err

    def elicitation(self) -> dict[str, Any]:
        """The URL-mode elicitation params (2025-11-25 `elicitation/create`, mode `url`)."""
        return {"mode": "url", "message": self.prompt, "url": self.url, "elicitationId": self.elicitation_id}
