"""Authentication at the front door, failing closed: who is calling, or 401/403.

Credentials: `Authorization: Bearer <token>` (a Stile API key `stile_...`, else a JWT from a configured
issuer) or `X-API-Key: <key>`. API keys come from the state store (hashed) or are declared hashed in
config. The client's token never travels further than this module: upstream requests are built from
scratch. A 401 carries `WWW-Authenticate: Bearer resource_metadata=...` (RFC 9728) so OAuth clients can
discover the authorization server.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import time
from collections import OrderedDict
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from stile.config.model import GatewayConfig
from stile.core.context import Principal
from stile.identity.audience import NO_AUDIENCE
from stile.identity.jwt import IssuerConfig, JwtVerifier, TokenError
from stile.stores.keys import KeyStore, open_key_store, verify_against_hash
from stile.wire.errors import ClientError

if TYPE_CHECKING:
    from collections.abc import Mapping

log = logging.getLogger("stile.authn")
API_KEY_PREFIX = "stile_"
CACHE_SIZE = 10_000
JWT_CACHE_SECONDS = 60.0
REFUSED_KEY = "invalid, revoked or expired API key"


class AuthRequired(ClientError):
    """No usable credential (HTTP 401 with a WWW-Authenticate challenge)."""

    jsonrpc_code = -32600
    http_status = 401


class UnknownKey(AuthRequired):
    """A well-formed key the store does not accept (unknown, wrong, revoked or expired)."""


class Authenticator:
    def __init__(self, cfg: GatewayConfig, state_url: str) -> None:
        self.cfg = cfg
        self.state_url = state_url
        self._store: KeyStore | None = None
        self._cache: dict[bytes, tuple[Principal, float]] = {}
        # Keys the store refused, by digest -> until (monotonic), least recently refused first: a retried or
        # flooded unknown key costs a dict lookup, not a query, for `key_cache_seconds` (bounded LRU).
        self._refused: OrderedDict[bytes, float] = OrderedDict()
        issuers = issuer_configs(cfg)
        self.jwt = JwtVerifier(issuers) if issuers else None
        self._fixed_audience = {j.issuer for j in cfg.auth.jwt if j.audience}

    @property
    def store(self) -> KeyStore:
        if self._store is None:
            self._store = open_key_store(self.state_url)
        return self._store

    async def aclose(self) -> None:
        if self._store is not None:
            await self._store.aclose()

    async def authenticate(self, headers: Mapping[str, str], audience: str | None) -> Principal:
        """The caller, or AuthRequired. `audience` is the virtual server's canonical URL, None when the
        gateway cannot know it (identity/audience.py): then only issuers with a fixed `audience` verify."""
        token = _credential(headers)
        if token is None:
            raise AuthRequired("authentication required")
        # Verified credentials are cached by their SHA-256 (never the token itself): a cached principal
        # costs one hash and a dict lookup. Declared keys live as long as the config; store keys for
        # `key_cache_seconds` (a revocation elsewhere takes effect within it); JWTs until `exp` (<= 60 s).
        # Keys the store refused are remembered for `key_cache_seconds` too (`_refused`).
        digest = hashlib.sha256(f"{audience or ''}\n{token}".encode()).digest()
        now = time.monotonic()
        hit = self._cache.get(digest)
        if hit is not None and hit[1] > now:
            return hit[0]
        until = self._refused.get(digest)
        if until is not None:
            if until > now:
                self._refused.move_to_end(digest)
                raise UnknownKey(REFUSED_KEY)
            del self._refused[digest]
        try:
            principal, ttl = await self._verify(token, audience)
        except UnknownKey:
            self._remember_refusal(digest, now)
            raise
        if ttl > 0:
            if len(self._cache) >= CACHE_SIZE:
                self._cache.clear()
            self._cache[digest] = (principal, time.monotonic() + ttl)
        return principal

    def _remember_refusal(self, digest: bytes, now: float) -> None:
        ttl = self.cfg.auth.key_cache_seconds
        if ttl <= 0:
            return
        self._refused[digest] = now + ttl
        self._refused.move_to_end(digest)
        while len(self._refused) > CACHE_SIZE:
            self._refused.popitem(last=False)

    def forget_verified(self) -> None:
        """A key was revoked somewhere (`stile keys revoke` announces it on the bus): verify every credential
        again instead of trusting the cache for up to `key_cache_seconds`."""
        self._cache.clear()

    def cached_refusals(self) -> int:
        return len(self._refused)

    async def _verify(self, token: str, audience: str | None) -> tuple[Principal, float]:
        if token.startswith(API_KEY_PREFIX):
            return await self._api_key(token)
        if self.jwt is None:
            raise AuthRequired("invalid credential")
        # An issuer with a configured `audience` is checked against it; otherwise the audience is the
        # virtual server's canonical URL. The unverified `iss` only routes: the verifier checks it again.
        if _unverified_issuer(token) in self._fixed_audience:
            audience = ""
        elif audience is None:
            raise AuthRequired(NO_AUDIENCE)
        try:
            got = await self.jwt.verify(token, audience=audience or None)
        except TokenError as exc:
            log.info("bearer token refused: %s (%s)", exc.reason, exc.detail)
            raise AuthRequired("invalid or expired token") from exc
        exp = got.claims.get("exp")
        ttl = min(JWT_CACHE_SECONDS, float(exp) - time.time()) if isinstance(exp, int | float) else 0.0
        # When an agent presents a user's token, the user is the principal and the agent the actor.
        return Principal(agent=got.client_id, user=got.subject, roles=got.roles, method="jwt", email=got.email,
                         claims=got.claims), ttl

    async def _api_key(self, key: str) -> tuple[Principal, float]:
        if not self.cfg.auth.api_keys:
            raise AuthRequired("API keys are disabled")
        for declared in self.cfg.auth.keys:
            if verify_against_hash(key, declared.hash):
                return Principal(agent=declared.name, roles=tuple(declared.roles), method="api_key"), float("inf")
        record = await self.store.verify(key)
        if record is None:
            raise UnknownKey(REFUSED_KEY)
        ttl = self.cfg.auth.key_cache_seconds
        if record.expires_at is not None:
            ttl = min(ttl, (record.expires_at - datetime.now(UTC)).total_seconds())
        return Principal(agent=record.name, roles=record.roles, method="api_key"), ttl


def issuer_configs(cfg: GatewayConfig) -> list[IssuerConfig]:
    return [
        IssuerConfig(issuer=j.issuer, audience=j.audience or "", algorithms=tuple(j.algorithms),
                     jwks_url=j.jwks_url, static_keys=j.jwks, roles_claim=j.roles_claim, leeway=j.leeway)
        for j in cfg.auth.jwt
    ]


def missing_scopes(principal: Principal, required: list[str]) -> list[str]:
    """Required scopes a bearer token lacks (`scope` space-separated, or an `scp` list). Keys carry none:
    API keys are authorized by their roles, so scopes apply to tokens only."""
    if not required or principal.method != "jwt":
        return []
    raw = principal.claims.get("scope", principal.claims.get("scp", ""))
    granted: set[str] = set()
    if isinstance(raw, str):
        granted = set(raw.split())
    elif isinstance(raw, list):
        granted = {s for s in raw if isinstance(s, str)}
    return [s for s in required if s not in granted]


def _unverified_issuer(token: str) -> str | None:
    parts = token.split(".")
    if len(parts) != 3 or len(parts[1]) > 8192:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, binascii.Error):
        return None
    iss = claims.get("iss") if isinstance(claims, dict) else None
    return iss if isinstance(iss, str) else None


def _credential(headers: Mapping[str, str]) -> str | None:
    auth = headers.get("authorization")
    if auth is not None:
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
        return None
    key = headers.get("x-api-key")
    return key.strip() if key else None
