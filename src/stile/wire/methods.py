"""The method table: every message a client may send, in either era, and how the gateway treats it.

This table is the one place that decides what a client message *is*. Every front door (POST, the legacy
GET stream, `subscriptions/listen`, `initialize`, notifications, batch items, legacy HTTP+SSE) looks
the method up here and sends it through its virtual server's policy chain; a method that is not in the
table is refused (`-32601`) unless the virtual server lists it in `passthrough_methods` and the
caller's role grants it (`allow_methods`). The router has exactly one handler per routed kind, and a
test fails when a handler exists for a method the table does not classify (or the reverse).

Kinds:
- `list`: answered from the (narrowed) view, gateway-paginated;
- `tool`, `prompt`: named by `params.name`; `resource`: named by `params.uri`; `complete`: by `params.ref`;
- `local`: answered by the gateway itself (ping, logging/setLevel, server/discover);
- `initialize`: opens a legacy session (the frontend mints the id once the chain admitted it);
- `stream`: opens a long-lived notification stream (legacy GET, modern `subscriptions/listen`);
- `notification`: a client notification (never forwarded; the frontend acts on `cancelled`).
Pseudo-methods (`stream/get`, `stream/sse`) name transport operations that have no JSON-RPC method of
their own, so that they cross the chain and the audit like every request; a client cannot send them
(they are not `client` methods).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Era = Literal["legacy", "modern"]
Kind = Literal["list", "tool", "prompt", "resource", "complete", "local", "initialize", "stream", "notification"]

LEGACY: frozenset[Era] = frozenset({"legacy"})
MODERN: frozenset[Era] = frozenset({"modern"})
BOTH: frozenset[Era] = frozenset({"legacy", "modern"})

GET_STREAM = "stream/get"  # the legacy GET /mcp/<vs> notification stream
SSE_STREAM = "stream/sse"  # the legacy HTTP+SSE GET /sse/<vs> stream


@dataclass(frozen=True, slots=True)
class MethodSpec:
    name: str
    kind: Kind
    eras: frozenset[Era]
    client: bool = True  # False: a pseudo-method only a front door creates


_TABLE = (
    MethodSpec("initialize", "initialize", LEGACY),
    MethodSpec("ping", "local", LEGACY),
    MethodSpec("logging/setLevel", "local", LEGACY),
    MethodSpec("server/discover", "local", MODERN),
    MethodSpec("tools/list", "list", BOTH),
    MethodSpec("prompts/list", "list", BOTH),
    MethodSpec("resources/list", "list", BOTH),
    MethodSpec("resources/templates/list", "list", BOTH),
    MethodSpec("tools/call", "tool", BOTH),
    MethodSpec("prompts/get", "prompt", BOTH),
    MethodSpec("resources/read", "resource", BOTH),
    MethodSpec("resources/subscribe", "resource", LEGACY),
    MethodSpec("resources/unsubscribe", "resource", LEGACY),
    MethodSpec("completion/complete", "complete", BOTH),
    MethodSpec("subscriptions/listen", "stream", MODERN),
    MethodSpec(GET_STREAM, "stream", LEGACY, client=False),
    MethodSpec(SSE_STREAM, "stream", LEGACY, client=False),
    MethodSpec("notifications/initialized", "notification", LEGACY),
    MethodSpec("notifications/cancelled", "notification", BOTH),
    MethodSpec("notifications/progress", "notification", BOTH),
    MethodSpec("notifications/roots/list_changed", "notification", BOTH),
)
METHODS: dict[str, MethodSpec] = {m.name: m for m in _TABLE}
KNOWN = frozenset(METHODS)  # bounded label vocabulary for metrics: anything else is "other"


def classify(method: str, era: Era) -> MethodSpec | None:
    """The spec of a method a client sent in `era`, or None when the gateway does not handle it there."""
    spec = METHODS.get(method)
    if spec is None or era not in spec.eras:
        return None
    return spec


def client_method(method: object) -> bool:
    """False for the pseudo-methods only a front door may create (a client sending one is refused)."""
    spec = METHODS.get(method) if isinstance(method, str) else None
    return spec is None or spec.client


def label(method: str) -> str:
    """A metrics/trace label for a method: its own name when classified, else `other`."""
    return method if method in KNOWN else "other"
