"""The response cache's storage: an in-process LRU bounded by bytes and entries, and invalidation generations.

Entries hold the serialized reply (so every hit is a fresh object and the size is exact; the key's
own bytes count too, and long arguments are keyed by their BLAKE2b-256 digest), when it
expires (monotonic seconds) and the generation token it was computed under. Invalidation is O(1):
`notifications/*/list_changed` bumps the upstream's generation, `notifications/resources/updated` the
(upstream, URI) one; an entry whose token no longer matches is a miss and is dropped when next looked
up (or evicted as least recently used). A reply computed while an invalidation arrived carries the
token taken before the call, so it is never served.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable

Token = tuple[int, int, int]
MAX_URI_GENERATIONS = 100_000  # (upstream, URI) generations kept; beyond that every entry is invalidated


class Generations:
    def __init__(self) -> None:
        self.epoch = 0
        self.upstreams: dict[str, int] = {}
        self.uris: dict[tuple[str, str], int] = {}

    def token(self, upstream: str, uri: str | None) -> Token:
        return (self.epoch, self.upstreams.get(upstream, 0), self.uris.get((upstream, uri), 0) if uri else 0)

    def upstream_changed(self, upstream: str) -> None:
        self.upstreams[upstream] = self.upstreams.get(upstream, 0) + 1

    def resource_updated(self, upstream: str, uri: str) -> None:
        if len(self.uris) >= MAX_URI_GENERATIONS:
            self.uris.clear()
            self.epoch += 1  # forgetting the URI generations must not revive what they invalidated
        key = (upstream, uri)
        self.uris[key] = self.uris.get(key, 0) + 1


class _Entry:
    __slots__ = ("data", "expires", "size", "token")

    def __init__(self, data: bytes, expires: float, token: Token, size: int) -> None:
        self.data = data
        self.expires = expires
        self.token = token
        self.size = size


class MemoryStore:
    """Least recently used first out, once the entries exceed `max_entries` or their bytes `max_bytes`."""

    def __init__(self, max_bytes: int, max_entries: int) -> None:
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        self.bytes = 0
        self._entries: OrderedDict[Hashable, _Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Hashable, token: Token, now: float) -> tuple[bytes, float] | None:
        """(serialized reply, expiry) of a fresh entry computed under `token`, else None."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.expires <= now or entry.token != token:
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return entry.data, entry.expires

    def put(self, key: Hashable, data: bytes, expires: float, token: Token, key_bytes: int = 0) -> bool:
        """Store `data`; `key_bytes` (what the key itself holds) counts against `max_bytes` too."""
        size = len(data) + key_bytes
        if size > self.max_bytes:
            return False
        if key in self._entries:
            self._drop(key)
        self._entries[key] = _Entry(data, expires, token, size)
        self.bytes += size
        while self.bytes > self.max_bytes or len(self._entries) > self.max_entries:
            self._drop(next(iter(self._entries)))
        return True

    def _drop(self, key: Hashable) -> None:
        entry = self._entries.pop(key)
        self.bytes -= entry.size
