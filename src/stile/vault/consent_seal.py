"""Sans-I/O pieces of the `user_oauth` consent flow: sealed one-time links and states, PKCE, replay memory.

A consent **link** (`/oauth/consent/<sealed>`) names the user and upstream it was made for, a random nonce
and an expiry, sealed with AES-256-GCM under `stile.oauth-key` (a vault secret shared by the replicas), so
it cannot be forged or re-pointed at another user. The OAuth **state** sent to the authorization server is
sealed the same way (another purpose in the authenticated data) and carries the PKCE verifier, the link's
nonce and the SHA-256 of a random **binder** that only the browser which opened the link holds (a cookie
scoped to the callback path): a state presented by another browser, replayed, or past its expiry is refused.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

OAUTH_KEY = "stile.oauth-key"
MAX_SEALED = 4096
_NONCE = 12


class ConsentRefused(Exception):
    """A consent link or callback that must not proceed; the message is safe to show to the browser."""


def new_oauth_key() -> bytes:
    return base64.b64encode(secrets.token_bytes(32))


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def pkce_pair() -> tuple[str, str]:
    """(code_verifier, S256 code_challenge) per RFC 7636."""
    verifier = secrets.token_urlsafe(48)
    return verifier, _b64(hashlib.sha256(verifier.encode("ascii")).digest())


def binder_hash(binder: str) -> str:
    return hashlib.sha256(binder.encode()).hexdigest()


@dataclass(frozen=True)
class ConsentLink:
    user: str
    upstream: str
    nonce: str
    expires: float


@dataclass(frozen=True)
class PendingState:
    user: str
    upstream: str
    nonce: str
    verifier: str
    binder: str  # sha256 of the browser's binder cookie
    expires: float


class Sealer:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._key: bytes | None = None
        self._used: dict[str, float] = {}  # nonce (+ purpose) -> expiry: single use

    @property
    def ready(self) -> bool:
        return self._key is not None

    def load(self, key_text: bytes) -> None:
        raw = base64.b64decode(key_text)
        if len(raw) != 32:
            raise ValueError("stile.oauth-key must hold 32 bytes")
        self._key = raw

    def _seal(self, purpose: str, payload: dict[str, Any]) -> str:
        assert self._key is not None
        nonce = os.urandom(_NONCE)
        body = json.dumps(payload, separators=(",", ":")).encode()
        return _b64(nonce + AESGCM(self._key).encrypt(nonce, body, purpose.encode()))

    def _open(self, purpose: str, sealed: str) -> dict[str, Any]:
        if self._key is None or not sealed or len(sealed) > MAX_SEALED:
            raise ConsentRefused("this link is not valid")
        try:
            raw = _unb64(sealed)
            body = AESGCM(self._key).decrypt(raw[:_NONCE], raw[_NONCE:], purpose.encode())
            payload = json.loads(body)
        except (binascii.Error, ValueError, InvalidTag):
            raise ConsentRefused("this link is not valid (altered, or made by another deployment)") from None
        if not isinstance(payload, dict):
            raise ConsentRefused("this link is not valid")
        exp = payload.get("exp")
        if not isinstance(exp, int | float) or exp <= self.clock():
            raise ConsentRefused("this link has expired: ask the agent again for a new one")
        return payload

    def link(self, user: str, upstream: str, ttl: float) -> tuple[str, ConsentLink]:
        """A new sealed consent link token for (user, upstream)."""
        link = ConsentLink(user, upstream, secrets.token_urlsafe(12), self.clock() + ttl)
        return self._seal("consent", {"u": user, "up": upstream, "n": link.nonce, "exp": link.expires}), link

    def open_link(self, sealed: str) -> ConsentLink:
        """The link's content, consumed (a second opening is refused)."""
        p = self._open("consent", sealed)
        link = ConsentLink(str(p.get("u")), str(p.get("up")), str(p.get("n")), float(p["exp"]))
        self._consume("consent|" + link.nonce, link.expires)
        return link

    def state(self, link: ConsentLink, verifier: str, binder: str) -> str:
        return self._seal("state", {"u": link.user, "up": link.upstream, "n": link.nonce, "v": verifier,
                                    "b": binder_hash(binder), "exp": link.expires})

    def open_state(self, sealed: str, binder_for: Callable[[str], str | None]) -> PendingState:
        """The pending authorization a callback's `state` names; refused for another browser (`binder_for`:
        the binder cookie of the flow whose link nonce it is given), a replay or an expired state. Consumed
        only when everything checks."""
        p = self._open("state", sealed)
        got = PendingState(str(p.get("u")), str(p.get("up")), str(p.get("n")), str(p.get("v")), str(p.get("b")),
                           float(p["exp"]))
        binder = binder_for(got.nonce)
        if binder is None or not hmac.compare_digest(binder_hash(binder), got.binder):
            raise ConsentRefused("this authorization was started in another browser: open the consent link "
                                 "again from the agent, in this browser")
        self._consume("state|" + got.nonce, got.expires)
        return got

    def _consume(self, key: str, expires: float) -> None:
        now = self.clock()
        if key in self._used:
            raise ConsentRefused("this link was already used: ask the agent again for a new one")
        if len(self._used) > 10_000:
            self._used = {k: e for k, e in self._used.items() if e > now}
            if len(self._used) > 10_000:
                raise ConsentRefused("too many consents in progress; try again in a few minutes")
        self._used[key] = expires
