"""Fan-out of unsolicited notifications (list_changed, resources/updated) to listening clients.

Subscribers are legacy GET streams and modern `subscriptions/listen` streams on this process;
every replica listens to every upstream itself, so no shared bus is needed for these.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from stile.wire.jsonrpc import Message


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

    def session_uris(self, nonce: str) -> set[str]:
        """The live set of URIs a legacy session subscribed to (shared with its GET stream)."""
        uris = self._session_uris.pop(nonce, None)
        if uris is None:
            uris = set()
            if len(self._session_uris) >= self.MAX_SESSIONS:
                self._session_uris.pop(next(iter(self._session_uris)))
        self._session_uris[nonce] = uris  # re-inserted: ordered by last use
        return uris

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
