"""Identity assertions: short-lived JWTs Stile signs to tell an upstream who a call is for.

`identity: assertion` on an upstream makes every request to it carry ``Authorization: Bearer <jwt>`` with
``iss`` (the gateway), ``sub`` (the user; the agent when there is no user; ``stile`` for the gateway's own
discovery calls), ``act: {"sub": agent}``, ``aud`` (the upstream's URL), ``scope``, ``iat``/``exp`` (60 s),
``jti``. ES256; the key pair is a vault secret (`stile.signing-key`, a private JWK with its `kid`), created on
first use and rotated by `stile secrets rotate-signing-key`; the newest versions' public keys are published
at ``/.well-known/jwks.json`` so tokens signed just before a rotation still verify. Tokens are cached per
(subject, agent, audience, scope, key) until `REUSE_MARGIN` seconds before they expire.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Callable
from typing import Any

from joserfc import jwt
from joserfc.jwk import ECKey

SIGNING_KEY = "stile.signing-key"
TTL = 60
REUSE_MARGIN = 15
MAX_CACHED = 10_000
SERVICE_SUBJECT = "stile"


def new_signing_key() -> bytes:
    """A fresh ES256 private JWK (JSON bytes) with a random `kid`: what the vault stores."""
    key = ECKey.generate_key("P-256", parameters={"kid": secrets.token_hex(8), "alg": "ES256", "use": "sig"},
                             private=True)
    return json.dumps(key.as_dict(private=True)).encode()


def token_id_hash(jti: str) -> str:
    """What the audit trail records of a token: never the token."""
    return hashlib.sha256(jti.encode()).hexdigest()[:16]


class Minter:
    def __init__(self, ttl: int = TTL, clock: Callable[[], float] = time.time) -> None:
        self.ttl = ttl
        self.clock = clock
        self._keys: list[ECKey] = []
        self._cache: dict[tuple[str, str, str, str, str], tuple[str, str, float]] = {}

    @property
    def ready(self) -> bool:
        return bool(self._keys)

    def load(self, versions: list[bytes]) -> None:
        """The signing keys, newest first (the newest signs; all are published)."""
        self._keys = [ECKey.import_key(json.loads(v)) for v in versions]

    def jwks(self) -> dict[str, Any]:
        keys = []
        for key in self._keys:
            public = key.as_dict(private=False)
            public.setdefault("alg", "ES256")
            public.setdefault("use", "sig")
            keys.append(public)
        return {"keys": keys}

    def mint(self, issuer: str, subject: str, agent: str | None, audience: str, scope: str) -> tuple[str, str]:
        """(token, jti) for this caller, from the cache while it has more than REUSE_MARGIN seconds left."""
        key = self._keys[0]
        kid = str(key.kid)
        cache_key = (subject, agent or "", audience, scope, kid)
        now = self.clock()
        hit = self._cache.get(cache_key)
        if hit is not None and hit[2] - now > REUSE_MARGIN:
            return hit[0], hit[1]
        jti = secrets.token_urlsafe(16)
        iat = int(now)
        claims: dict[str, Any] = {"iss": issuer, "sub": subject, "aud": audience, "iat": iat, "nbf": iat - 5,
                                  "exp": iat + self.ttl, "jti": jti, "scope": scope}
        if agent and agent != subject:
            claims["act"] = {"sub": agent}
        token = jwt.encode({"alg": "ES256", "kid": kid, "typ": "JWT"}, claims, key)
        if len(self._cache) >= MAX_CACHED:
            self._cache.clear()
        self._cache[cache_key] = (token, jti, float(iat + self.ttl))
        return token, jti
