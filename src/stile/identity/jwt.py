"""JWT bearer-token verification for configured issuers (docs/security.md §4-§5).

Stile's own guards run on the raw token before joserfc sees it: a length cap, exactly three segments (JWE
is refused), canonical unpadded base64url, header and claims JSON without duplicate keys (or NaN), a header
allowlist (``alg``, ``kid``, ``typ``), the algorithm taken from the issuer's allowlist and never trusted
from the header alone, and ``typ`` limited to ``JWT``/``at+jwt``. The issuer is selected by an exact
``iss`` match; the signature is then checked by joserfc with one typed key and one algorithm, so an RSA,
EC or OKP public key can never act as an HMAC secret. HS* is only usable when an issuer lists it (and no
asymmetric algorithm) and configures static ``oct`` keys of at least 32 bytes.

JWKS (``jwks_url``) are fetched lazily and cached. Keys older than ``jwks_refresh_after`` are refreshed on
use (failed attempts are retried at most once per ``min_refetch_interval``); an unknown ``kid`` triggers a
refresh at most once per ``min_refetch_interval``, whatever the kids; a refresh replaces the
whole set (removed keys stop verifying). When the endpoint fails, cached keys younger than
``jwks_max_age`` are still used, older ones are not (fail closed). The token is never logged.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import re
import time
import warnings
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, Key, OctKey, OKPKey, RSAKey

from stile.upstreams.h1 import H1Error, H1Pool

__all__ = ["IssuerConfig", "JwtVerifier", "TokenError", "VerifiedToken"]

log = logging.getLogger(__name__)

MAX_TOKEN_LENGTH = 8 * 1024
MAX_KID_LENGTH = 256
MAX_JWKS_BYTES = 256 * 1024
MAX_JWKS_KEYS = 64
FETCH_TIMEOUT = 5.0
MIN_HMAC_KEY_BYTES = 32
_B64URL = re.compile(r"[A-Za-z0-9_-]+")
_HEADER_KEYS = frozenset({"alg", "kid", "typ"})
_TYPES = frozenset({"jwt", "at+jwt", "application/jwt", "application/at+jwt"})
_LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})
# algorithm -> (key type, allowed curves or None, minimum oct key bytes)
_ALGS: dict[str, tuple[str, frozenset[str] | None, int]] = {
    **{f"RS{n}": ("RSA", None, 0) for n in (256, 384, 512)},
    **{f"PS{n}": ("RSA", None, 0) for n in (256, 384, 512)},
    "ES256": ("EC", frozenset({"P-256"}), 0),
    "ES384": ("EC", frozenset({"P-384"}), 0),
    "ES512": ("EC", frozenset({"P-521"}), 0),
    "EdDSA": ("OKP", frozenset({"Ed25519", "Ed448"}), 0),
    "Ed25519": ("OKP", frozenset({"Ed25519"}), 0),
    **{f"HS{n}": ("oct", None, n // 8) for n in (256, 384, 512)},
}


class TokenError(Exception):
    """A rejected token. ``reason`` is safe to send to the client; ``detail`` is for logs (never the token)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail or reason

    def __str__(self) -> str:
        return self.reason


def _invalid(detail: str) -> TokenError:
    return TokenError("invalid token", detail)


@dataclass(frozen=True)
class IssuerConfig:
    issuer: str
    audience: str | list[str]  # "" or []: every verify() call passes the audience
    algorithms: tuple[str, ...] = ("RS256", "ES256", "EdDSA")  # allowlist; never taken from the token header
    jwks_url: str | None = None
    static_keys: dict[str, Any] | None = None  # a JWKS dict {"keys": [...]}
    roles_claim: str | None = "groups"
    leeway: int = 30  # seconds, at most 60
    jwks_max_age: float = 3600.0  # cached keys older than this are unusable if a refresh fails (fail closed)
    min_refetch_interval: float = 30.0  # bounded refetch on unknown kid
    jwks_refresh_after: float = 300.0  # cached keys older than this are refreshed when used


@dataclass(frozen=True)
class VerifiedToken:
    subject: str | None
    client_id: str | None  # ``azp`` or ``client_id``
    issuer: str
    roles: tuple[str, ...]
    claims: dict[str, Any]
    email: str | None


@dataclass
class _Keys:
    config: IssuerConfig
    keys: list[Key] | None = None
    fetched_at: float = float("-inf")
    last_attempt: float = float("-inf")  # any fetch
    last_kid_refetch: float = float("-inf")  # fetches for an unknown kid
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate JSON key {key!r}")
        out[key] = value
    return out


def _refuse_constant(name: str) -> None:
    raise ValueError(f"non-standard JSON constant {name}")


def strict_json(data: bytes | str) -> Any:
    """``json.loads`` refusing duplicate object keys and NaN/Infinity."""
    return json.loads(data, object_pairs_hook=_refuse_duplicates, parse_constant=_refuse_constant)


def _b64decode(segment: str, what: str) -> bytes:
    if not _B64URL.fullmatch(segment) or len(segment) % 4 == 1:
        raise _invalid(f"{what}: not canonical base64url")
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError) as exc:
        raise _invalid(f"{what}: bad base64url") from exc
    if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != segment:
        raise _invalid(f"{what}: non-canonical base64url (trailing bits)")
    return raw


def _json_object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        value = strict_json(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise _invalid(f"{what}: {exc}") from exc
    if not isinstance(value, dict):
        raise _invalid(f"{what}: not a JSON object")
    return value


def _number(claims: dict[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _invalid(f"claim {name} is not a number")
    return float(value)


def _opt_str(claims: dict[str, Any], name: str) -> str | None:
    value = claims.get(name)
    if value is not None and not isinstance(value, str):
        raise _invalid(f"claim {name} is not a string")
    return value


def _check_jwks_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme == "https" or (parts.scheme == "http" and parts.hostname in _LOOPBACK):
        return
    raise ValueError(f"jwks_url must be https (http only on loopback): {url!r}")


def _import_keys(jwks: Any, *, allow_oct: bool, source: str) -> list[Key]:
    """Typed keys from a JWKS dict; unusable entries are skipped (and logged), oct keys only if allowed."""
    if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list):
        raise ValueError(f"{source}: not a JWKS object with a 'keys' list")
    keys: list[Key] = []
    for entry in jwks["keys"][:MAX_JWKS_KEYS]:
        if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
            continue
        kty = entry.get("kty")
        try:
            if kty == "oct":
                if not allow_oct:
                    log.warning("%s: ignoring a symmetric key", source)
                    continue
                with warnings.catch_warnings():  # joserfc warns on short keys; they are refused below
                    warnings.simplefilter("ignore")
                    oct_key = OctKey.import_key(entry)
                if len(oct_key.raw_value) < MIN_HMAC_KEY_BYTES:
                    raise ValueError(f"{source}: HMAC keys must be at least {MIN_HMAC_KEY_BYTES} bytes")
                key: Key = oct_key
            elif kty == "RSA":
                key = RSAKey.import_key(entry)
            elif kty == "EC":
                key = ECKey.import_key(entry)
            elif kty == "OKP":
                key = OKPKey.import_key(entry)
            else:
                continue
        except (JoseError, TypeError, KeyError) as exc:
            log.warning("%s: skipping an unusable key (kid=%r): %s", source, entry.get("kid"), exc)
            continue
        keys.append(key)
    return keys


def _audiences(config: IssuerConfig) -> list[str]:
    if isinstance(config.audience, str):
        return [config.audience] if config.audience else []
    return list(config.audience)


def _validate(config: IssuerConfig) -> list[Key] | None:
    if not config.issuer:
        raise ValueError("issuer must not be empty")
    audiences = _audiences(config)  # empty: every verify() call must pass its audience
    if not all(isinstance(a, str) and a for a in audiences):
        raise ValueError(f"{config.issuer}: audience must be a string or a list of non-empty strings")
    if not config.algorithms:
        raise ValueError(f"{config.issuer}: algorithms must not be empty")
    for alg in config.algorithms:
        if alg not in _ALGS:
            raise ValueError(f"{config.issuer}: algorithm {alg!r} is not supported")
    hmac = [a for a in config.algorithms if a.startswith("HS")]
    if hmac and len(hmac) != len(config.algorithms):
        raise ValueError(f"{config.issuer}: HS* and asymmetric algorithms must not share an allowlist")
    if not 0 <= config.leeway <= 60:
        raise ValueError(f"{config.issuer}: leeway must be between 0 and 60 seconds")
    if not 0 < config.jwks_refresh_after <= config.jwks_max_age:
        raise ValueError(f"{config.issuer}: need 0 < jwks_refresh_after <= jwks_max_age")
    if (config.jwks_url is None) == (config.static_keys is None):
        raise ValueError(f"{config.issuer}: configure exactly one of jwks_url and static_keys")
    if hmac and config.static_keys is None:
        raise ValueError(f"{config.issuer}: HS* algorithms need static oct keys")
    if config.jwks_url is not None:
        _check_jwks_url(config.jwks_url)
        return None
    keys = _import_keys(config.static_keys, allow_oct=bool(hmac), source=f"{config.issuer} static_keys")
    if hmac and not any(k.key_type == "oct" for k in keys):
        raise ValueError(f"{config.issuer}: HS* algorithms need an oct key of at least {MIN_HMAC_KEY_BYTES} bytes")
    if not keys:
        raise ValueError(f"{config.issuer}: static_keys holds no usable key")
    return keys


async def fetch_jwks(url: str) -> bytes:
    """GET ``url`` with a short timeout and a body cap (the default ``fetch``)."""
    pool = H1Pool(url, max_connections=1, connect_timeout=FETCH_TIMEOUT)
    try:
        async with asyncio.timeout(FETCH_TIMEOUT):
            resp = await pool.request("GET", {"accept": "application/json"})
            async with resp:
                if resp.status != 200:
                    raise OSError(f"JWKS endpoint answered HTTP {resp.status}")
                parts: list[bytes] = []
                size = 0
                async for chunk in resp.iter_chunks():
                    size += len(chunk)
                    if size > MAX_JWKS_BYTES:
                        raise OSError(f"JWKS larger than {MAX_JWKS_BYTES} bytes")
                    parts.append(chunk)
                return b"".join(parts)
    finally:
        await pool.aclose()


class JwtVerifier:
    """Verify bearer JWTs against a fixed set of issuers. ``now`` (seconds since the epoch) is for tests."""

    def __init__(self, issuers: list[IssuerConfig], *, fetch: Callable[[str], Awaitable[bytes]] | None = None,
                 now: Callable[[], float] = time.time) -> None:
        if not issuers:
            raise ValueError("at least one issuer is required")
        self._issuers: dict[str, _Keys] = {}
        for config in issuers:
            if config.issuer in self._issuers:
                raise ValueError(f"issuer {config.issuer!r} is configured twice")
            static = _validate(config)
            state = _Keys(config)
            if static is not None:
                state.keys, state.fetched_at = static, float("inf")
            self._issuers[config.issuer] = state
        self._fetch = fetch or fetch_jwks
        self._now = now

    async def verify(self, token: str, *, audience: str | None = None) -> VerifiedToken:
        """The verified token, or ``TokenError``. ``audience`` replaces the issuer's configured audience."""
        header, claims = self._guard(token)
        issuer = claims.get("iss")
        state = self._issuers.get(issuer) if isinstance(issuer, str) else None
        if state is None:
            raise _invalid("unknown or missing issuer")
        config = state.config
        alg = header["alg"]
        if alg not in config.algorithms:
            raise _invalid(f"algorithm {alg!r} not allowed for this issuer")
        await self._check_signature(state, token, alg, header.get("kid"))
        return self._check_claims(config, claims, audience)

    def _guard(self, token: str) -> tuple[dict[str, Any], dict[str, Any]]:
        if not isinstance(token, str) or len(token) > MAX_TOKEN_LENGTH:
            raise _invalid("token missing or longer than the limit")
        segments = token.split(".")
        if len(segments) != 3:
            raise _invalid(f"{len(segments)} segments (JWE and other serializations are not accepted)")
        header = _json_object(_b64decode(segments[0], "header"), "header")
        payload = _b64decode(segments[1], "payload")
        _b64decode(segments[2], "signature")
        extra = set(header) - _HEADER_KEYS
        if extra:
            raise _invalid(f"header parameters not allowed: {sorted(extra)}")
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in _ALGS:
            raise _invalid("missing or unsupported alg")
        kid = header.get("kid")
        if kid is not None and (not isinstance(kid, str) or not kid or len(kid) > MAX_KID_LENGTH):
            raise _invalid("malformed kid")
        typ = header.get("typ")
        if typ is not None and (not isinstance(typ, str) or typ.lower() not in _TYPES):
            raise _invalid("typ is not JWT or at+jwt")
        return header, _json_object(payload, "claims")

    async def _check_signature(self, state: _Keys, token: str, alg: str, kid: str | None) -> None:
        await self._ensure_fresh(state)
        candidates = self._candidates(state, alg, kid)
        if (not candidates and state.config.jwks_url is not None
                and await self._refresh(state, unknown_kid=True)):
            candidates = self._candidates(state, alg, kid)
        if not candidates:
            raise _invalid(f"no key for kid={kid!r} alg={alg}")
        with warnings.catch_warnings():  # joserfc flags EdDSA as deprecated (RFC 9864); it is still allowlisted
            warnings.simplefilter("ignore")
            for key in candidates:
                try:
                    jws.deserialize_compact(token, key, algorithms=[alg])
                    return
                except (JoseError, ValueError):
                    continue
        raise _invalid("bad signature")

    def _candidates(self, state: _Keys, alg: str, kid: str | None) -> list[Key]:
        kty, curves, min_bytes = _ALGS[alg]
        out = []
        for key in self._usable(state):
            if key.key_type != kty or (kid is not None and key.kid != kid):
                continue
            if key.alg is not None and key.alg != alg:
                continue
            if curves is not None and key.get("crv") not in curves:
                continue
            if isinstance(key, OctKey) and len(key.raw_value) < min_bytes:
                continue
            out.append(key)
        return out

    def _usable(self, state: _Keys) -> list[Key]:
        if state.keys is None or self._now() - state.fetched_at >= state.config.jwks_max_age:
            return []
        return state.keys

    async def _ensure_fresh(self, state: _Keys) -> None:
        if state.config.jwks_url is None:
            return
        if state.keys is None or self._now() - state.fetched_at >= state.config.jwks_refresh_after:
            await self._refresh(state)  # a failed attempt is retried at most once per min_refetch_interval
        if not self._usable(state):
            raise TokenError("signing keys unavailable", f"no usable JWKS for {state.config.issuer}")

    async def _refresh(self, state: _Keys, *, unknown_kid: bool = False) -> bool:
        """Fetch the JWKS unless the same kind of attempt (scheduled, or for an unknown kid) ran within
        ``min_refetch_interval``; True if the key set was replaced."""
        url, interval = state.config.jwks_url or "", state.config.min_refetch_interval
        async with state.lock:
            if self._now() - (state.last_kid_refetch if unknown_kid else state.last_attempt) < interval:
                return False
            if unknown_kid:
                state.last_kid_refetch = self._now()
            state.last_attempt = self._now()
            try:
                keys = _import_keys(strict_json(await self._fetch(url)), allow_oct=False, source=url)
            except (OSError, H1Error, ValueError, RecursionError) as exc:  # TimeoutError is an OSError
                log.warning("JWKS refresh from %s failed: %s", url, exc)
                return False
            state.keys, state.fetched_at = keys, self._now()
            log.info("JWKS refreshed from %s: %d keys", url, len(keys))
            return True

    def _check_claims(self, config: IssuerConfig, claims: dict[str, Any], audience: str | None) -> VerifiedToken:
        now = self._now()
        exp = _number(claims, "exp")
        if exp is None:
            raise _invalid("exp missing")
        if now >= exp + config.leeway:
            raise TokenError("token expired", "exp in the past")
        nbf = _number(claims, "nbf")
        if nbf is not None and now < nbf - config.leeway:
            raise _invalid("nbf in the future")
        iat = _number(claims, "iat")
        if iat is not None and now < iat - config.leeway:
            raise _invalid("iat in the future")
        expected = [audience] if audience else _audiences(config)
        aud = claims.get("aud")
        token_aud = [aud] if isinstance(aud, str) else aud
        if not isinstance(token_aud, list) or not token_aud or not all(isinstance(a, str) for a in token_aud):
            raise _invalid("aud missing or malformed")
        if not expected or not set(token_aud) & set(expected):
            raise _invalid("aud does not match")
        client_id = _opt_str(claims, "azp") or _opt_str(claims, "client_id")
        email = claims.get("email")
        return VerifiedToken(subject=_opt_str(claims, "sub"), client_id=client_id, issuer=config.issuer,
                             roles=self._roles(config, claims), claims=claims,
                             email=email if isinstance(email, str) else None)

    @staticmethod
    def _roles(config: IssuerConfig, claims: dict[str, Any]) -> tuple[str, ...]:
        if config.roles_claim is None:
            return ()
        value = claims.get(config.roles_claim)
        if value is None:
            return ()
        if isinstance(value, str):
            return tuple(value.split())
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise _invalid(f"claim {config.roles_claim} is not a string or a list of strings")
