"""Fan-out of unsolicited notifications (list_changed, resources/updated) to listening clients.

Subscribers are legacy GET streams and modern `subscriptions/listen` streams on this process. What
other replicas learn from their upstreams reaches this hub through `core/cluster.py` (the bus); so do the
resource subscriptions a legacy session made through another replica (`on_uri_change`, `apply_uri_change`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from stile.wire import jsonrpc
from stile.wire.jsonrpc import Message

# the notifications that tell a client to list again (what `publish_lists_changed` sends, in this order)
LIST_CHANGED = ("notifications/tools/list_changed", "notifications/prompts/list_changed",
                "notifications/resources/list_changed")


@dataclass(eq=False)
class Subscriber:
    virtual_server: str
    send: Callable[[Message], None]
    methods: set[str] | None = None  # None: every notification type
    uris: set[str] = field(default_factory=set)  # exposed URIs for resources/updated


class Hub:
    MAX_SESSIONS = 100_000  # legacy sessions with resource subscriptions; the least recently used go first

    def __init__(self) -> None:
        self._subs: dict[str, set[Subscriber]] = {}
        self._session_uris: dict[str, set[str]] = {}  # legacy session nonce -> subscribed exposed URIs
        # told of every (un)subscription (nonce, exposed URI, subscribed): shares it with other replicas
        self.on_uri_change: Callable[[str, str, bool], Awaitable[None]] | None = None

    def session_uris(self, nonce: str) -> set[str]:
        """The live set of URIs a legacy session subscribed to (shared with its GET stream)."""
        uris = self._session_uris.pop(nonce, None)
        if uris is None:
            uris = set()
            if len(self._session_uris) >= self.MAX_SESSIONS:
                self._session_uris.pop(next(iter(self._session_uris)))
        self._session_uris[nonce] = uris  # re-inserted: ordered by last use
        return uris

    async def subscribe_uri(self, nonce: str, uri: str, present: bool) -> None:
        uris = self.session_uris(nonce)
        if present:
            uris.add(uri)
        else:
            uris.discard(uri)
        if self.on_uri_change is not None:
            await self.on_uri_change(nonce, uri, present)

    def apply_uri_change(self, nonce: str, uri: str, present: bool) -> None:
        """A change made through another replica: applied if this replica knows the session (else loaded later)."""
        uris = self._session_uris.get(nonce)
        if uris is not None:
            if present:
                uris.add(uri)
            else:
                uris.discard(uri)

    def drop_session(self, nonce: str) -> None:
        self._session_uris.pop(nonce, None)

    def add(self, sub: Subscriber) -> None:
        self._subs.setdefault(sub.virtual_server, set()).add(sub)

    def remove(self, sub: Subscriber) -> None:
        self._subs.get(sub.virtual_server, set()).discard(sub)

    def count(self, virtual_server: str | None = None) -> int:
        if virtual_server is not None:
            return len(self._subs.get(virtual_server, ()))
        return sum(len(s) for s in self._subs.values())

    def publish_lists_changed(self, virtual_server: str) -> None:
        """Every list of this virtual server may have changed (pins approved, a quarantine released)."""
        for method in LIST_CHANGED:
            self.publish(virtual_server, jsonrpc.notification(method))

    def publish(self, virtual_server: str, msg: Message, uri: str | None = None) -> int:
        sent = 0
        for sub in list(self._subs.get(virtual_server, ())):
            if sub.methods is not None and msg.get("method") not in sub.methods:
                continue
            if uri is not None and uri not in sub.uris:
                continue
            sub.send(msg)
            sent += 1
        return sent
