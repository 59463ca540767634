"""Legacy downstream sessions sealed into their own id (AES-GCM), so any replica can resume them.

The id carries the negotiated version, the client's capabilities and info, and the virtual server;
the key comes from STILE_SESSION_KEY (base64 of 32 bytes), `session_key` in config, or is random per
process. Tampered, foreign-key or wrong-virtual-server ids open to None (answered 404). Lifetime, owner
and revocation (DELETE) are checked by `core/session_guard.py`.
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
import time
from dataclasses import dataclass
from typing import Any

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_AAD = b"stile-session-v1"


def decode_key(text: str) -> bytes:
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except binascii.Error as exc:
        raise ValueError("session key must be base64") from exc
    if len(key) != 32:
        raise ValueError(f"session key must decode to 32 bytes, got {len(key)}")
    return key


def resolve_key(configured: str | None) -> tuple[bytes, str]:
    """The session key and where it came from."""
    env = os.environ.get("STILE_SESSION_KEY")
    if env:
        return decode_key(env), "STILE_SESSION_KEY"
    if configured:
        return decode_key(configured), "config session_key"
    return secrets.token_bytes(32), "random (sessions do not survive a restart or span replicas)"


@dataclass(frozen=True, slots=True)
class LegacySession:
    version: str
    virtual_server: str
    client_caps: dict[str, Any]
    client_info: dict[str, Any] | None
    issued: int
    nonce: str
    owner: str = ""  # the principal the session is bound to ("" for anonymous)


def owner_of(principal: Any) -> str:
    """A stable identity for binding sessions and MRTR state: auth method, agent and user.

    A JSON array, so claims containing any separator stay apart (azp `a:b` + sub `c` is not azp `a` +
    sub `b:c`); None and "" are distinct too."""
    if principal is None or getattr(principal, "method", "none") == "none":
        return ""
    return orjson.dumps([principal.method, principal.agent, principal.user]).decode()


class SessionSealer:
    CACHE_SIZE = 4096  # recently opened ids: a legacy client sends the same id on every request

    ACTIVE_WINDOW = 300.0  # seconds a session counts as active after its last request
    MAX_TRACKED = 100_000

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)
        self._opened: dict[str, LegacySession] = {}
        self._seen: dict[str, float] = {}  # nonce -> last use (monotonic), for the active-sessions gauge
        # with a shared bus: nonces used / ended since the last report to the cluster-wide gauge
        self.track_fresh = False
        self.fresh: set[str] = set()
        self.gone: set[str] = set()

    def _touch(self, nonce: str) -> None:
        if self.track_fresh and len(self.fresh) < self.MAX_TRACKED:
            self.fresh.add(nonce)
        seen = self._seen
        seen.pop(nonce, None)  # re-insert: the dict stays ordered by last use
        seen[nonce] = time.monotonic()
        if len(seen) > self.MAX_TRACKED:
            seen.pop(next(iter(seen)))

    def forget(self, nonce: str) -> None:
        self._seen.pop(nonce, None)
        if self.track_fresh and len(self.gone) < self.MAX_TRACKED:
            self.fresh.discard(nonce)
            self.gone.add(nonce)

    def active_count(self) -> int:
        """Sessions used within ACTIVE_WINDOW on this replica (expired entries are pruned here)."""
        horizon = time.monotonic() - self.ACTIVE_WINDOW
        seen = self._seen
        while seen:
            oldest = next(iter(seen))
            if seen[oldest] >= horizon:
                break
            del seen[oldest]
        return len(seen)

    def mint(self, version: str, virtual_server: str, caps: dict[str, Any],
             info: dict[str, Any] | None, owner: str = "") -> tuple[str, LegacySession]:
        sess = LegacySession(version, virtual_server, caps, info, int(time.time()), secrets.token_hex(8), owner)
        payload = orjson.dumps({"v": version, "s": virtual_server, "c": caps, "i": info,
                                "t": sess.issued, "n": sess.nonce, "o": owner})
        nonce = secrets.token_bytes(12)
        sealed = nonce + self._aead.encrypt(nonce, payload, _AAD)
        self._touch(sess.nonce)
        return base64.urlsafe_b64encode(sealed).decode().rstrip("="), sess

    def open(self, token: str, virtual_server: str) -> LegacySession | None:
        cached = self._opened.get(token)
        if cached is not None:
            if cached.virtual_server != virtual_server:
                return None
            self._touch(cached.nonce)
            return cached
        session = self._open(token, virtual_server)
        if session is not None:
            self._touch(session.nonce)
            if len(self._opened) >= self.CACHE_SIZE:
                self._opened.pop(next(iter(self._opened)))
            self._opened[token] = session
        return session

    def _open(self, token: str, virtual_server: str) -> LegacySession | None:
        if not token or len(token) > 16384:
            return None
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            if len(raw) < 29:
                return None
            data = orjson.loads(self._aead.decrypt(raw[:12], raw[12:], _AAD))
        except (binascii.Error, ValueError, InvalidTag):
            return None
        if not isinstance(data, dict) or data.get("s") != virtual_server:
            return None
        return LegacySession(str(data["v"]), virtual_server, data.get("c") or {}, data.get("i"),
                             int(data.get("t", 0)), str(data.get("n", "")), str(data.get("o", "")))
