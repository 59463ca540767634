"""`identity: user_oauth`: Stile is the OAuth client of an upstream's authorization server, one grant per user.

Discovery (`oauth_discovery.py`) runs once per upstream (again after a failure); configured endpoints skip it.

Tokens live in the vault, one secret per (user, upstream) named `stile.oauth.<upstream>.<sha256(user)[:32]>`
(JSON: access and refresh token, expiry), read through an in-memory copy at most `vault.cache_seconds` old;
refreshed `refresh_margin` seconds before they expire or when the upstream answers 401. A user without a
grant gets `ConsentRequired` with a sealed one-time consent link (`consent_seal.py`); `consent` and
`callback` are the two browser routes of the flow. `revoke` is `stile secrets revoke-user`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from html import escape
from typing import Any
from urllib.parse import urlencode

import aiohttp
from sqlalchemy.exc import SQLAlchemyError

from stile.config.upstream_identity import UserOAuthConfig
from stile.stores.revocations import RevocationStore
from stile.vault.consent_seal import ConsentRefused, Sealer, pkce_pair
from stile.vault.keyring import VaultError
from stile.vault.oauth_discovery import Endpoints, discover
from stile.vault.oauth_http import OAuthHttpError, basic_auth, jwt_claims, post_form, token_lifetime
from stile.vault.store import SecretStore
from stile.wire.errors import ConsentRequired, UpstreamTimeout, UpstreamUnavailable

log = logging.getLogger("stile.vault.oauth")
PREFIX = "stile.oauth."
CALLBACK_PATH = "/oauth/callback"
USED_CONSENTS_TABLE = "stile_oauth_used"
CONSENT_PATH = "/oauth/consent/"
MAX_CACHED = 10_000
POLL_SECONDS = 1.0  # a legacy call waiting for consent looks in the vault this often (another replica's callback)
COOKIE = "stile_oauth_"


def grant_name(upstream: str, user: str) -> str:
    return f"{PREFIX}{upstream}.{hashlib.sha256(user.encode()).hexdigest()[:32]}"


def is_grant_of(name: str, user: str, upstream: str | None = None) -> bool:
    """Whether vault secret `name` holds `user`'s grant (for `upstream`, or any)."""
    suffix = "." + hashlib.sha256(user.encode()).hexdigest()[:32]
    if upstream is not None:
        return name == grant_name(upstream, user)
    return name.startswith(PREFIX) and name.endswith(suffix)


@dataclass(frozen=True)
class Grant:
    access_token: str
    refresh_token: str | None
    expires_at: float | None

    def dumps(self) -> bytes:
        return json.dumps({"access_token": self.access_token, "refresh_token": self.refresh_token,
                           "expires_at": self.expires_at}).encode()

    @staticmethod
    def loads(raw: bytes) -> Grant | None:
        try:
            v = json.loads(raw)
            return Grant(str(v["access_token"]), v.get("refresh_token"), v.get("expires_at"))
        except (ValueError, KeyError, TypeError):
            return None


@dataclass(frozen=True)
class Page:
    """A browser answer of the consent flow (never a redirect to anything but the authorization server)."""

    status: int
    body: str
    location: str | None = None
    cookie: str | None = None


def _page(status: int, title: str, text: str) -> Page:
    return Page(status, f"<!doctype html><title>{escape(title)}</title><h1>{escape(title)}</h1>"
                        f"<p>{escape(text)}</p>")


class UserOAuth:
    def __init__(self, upstreams: Mapping[str, tuple[str, UserOAuthConfig]], store: SecretStore,
                 secret: Callable[[str, str], str], cache_seconds: float,
                 clock: Callable[[], float] = time.time, used: RevocationStore | None = None) -> None:
        self.upstreams = dict(upstreams)  # name -> (url, config)
        self.store = store
        self.secret = secret  # (upstream, "${secret:...}") -> the value; raises UpstreamUnavailable
        self.cache_seconds = cache_seconds
        self.clock = clock
        self.sealer = Sealer(clock)
        self.base = ""  # the gateway's public base URL (set by the vault)
        self._endpoints: dict[str, Endpoints] = {}
        self._grants: dict[tuple[str, str], tuple[Grant | None, float]] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._done: dict[tuple[str, str], asyncio.Event] = {}  # (upstream, user) -> set when a consent completed
        self._http: aiohttp.ClientSession | None = None
        self.used = used  # links and states already used, shared by replicas and restarts (the state store)

    def http(self) -> aiohttp.ClientSession:
        if self._http is None:
            self._http = aiohttp.ClientSession()
        return self._http

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.close()
        if self.used is not None:
            await self.used.aclose()

    async def _claim(self, key: str, expires: float) -> None:
        """Single use across replicas and restarts (this process already refused a local replay)."""
        if self.used is None:
            return
        try:
            if await self.used.is_revoked(key):
                raise ConsentRefused("this link was already used: ask the agent again for a new one")
            await self.used.revoke(key, expires)
        except (SQLAlchemyError, OSError) as exc:
            raise ConsentRefused("the gateway cannot record this consent right now; try again shortly") from exc

    # -- discovery ---------------------------------------------------------------------------------------
    async def endpoints(self, upstream: str) -> Endpoints:
        got = self._endpoints.get(upstream)
        if got is not None:
            return got
        url, cfg = self.upstreams[upstream]
        if cfg.authorization_endpoint and cfg.token_endpoint:
            got = Endpoints(cfg.authorization_endpoint, cfg.token_endpoint)
        else:
            try:
                got = await discover(self.http(), url, cfg)
            except OAuthHttpError as exc:
                raise UpstreamUnavailable(upstream, f"OAuth discovery failed: {exc.reason}") from None
        self._endpoints[upstream] = got
        return got

    # -- grants ------------------------------------------------------------------------------------------
    async def _load(self, upstream: str, user: str, fresh: bool = False) -> Grant | None:
        key = (upstream, user)
        hit = self._grants.get(key)
        now = self.clock()
        if hit is not None and not fresh and now - hit[1] < self.cache_seconds:
            return hit[0]
        try:
            raw = (await self.store.latest([grant_name(upstream, user)])).get(grant_name(upstream, user))
        except (VaultError, SQLAlchemyError, OSError) as exc:
            raise UpstreamUnavailable(upstream, "the vault could not be read for the user's token") from exc
        grant = Grant.loads(raw) if raw is not None else None
        if len(self._grants) >= MAX_CACHED:
            self._grants.clear()
        self._grants[key] = (grant, now)
        return grant

    async def _save(self, upstream: str, user: str, grant: Grant) -> None:
        name = grant_name(upstream, user)
        try:
            await self.store.rotate(name, grant.dumps(), create=True)
            await self.store.prune(name, keep=1)
        except (VaultError, SQLAlchemyError, OSError) as exc:
            raise UpstreamUnavailable(upstream, "the vault could not store the user's token") from exc
        self._grants[(upstream, user)] = (grant, self.clock())

    async def _forget(self, upstream: str, user: str) -> None:
        self._grants.pop((upstream, user), None)
        try:
            await self.store.delete(grant_name(upstream, user))
        except (SQLAlchemyError, OSError) as exc:
            raise UpstreamUnavailable(upstream, "the vault could not drop the user's refused token") from exc

    def _client_auth(self, upstream: str, cfg: UserOAuthConfig, form: dict[str, str]) -> str | None:
        if cfg.client_secret is None:
            form["client_id"] = cfg.client_id
            return None
        return basic_auth(cfg.client_id, self.secret(upstream, cfg.client_secret))

    async def _token_call(self, upstream: str, form: dict[str, str]) -> dict[str, Any]:
        url, cfg = self.upstreams[upstream]
        ends = await self.endpoints(upstream)
        form["resource"] = url
        auth = self._client_auth(upstream, cfg, form)
        return await post_form(self.http(), ends.token, form, timeout=cfg.timeout, authorization=auth,
                               what="the upstream's token endpoint")

    def _grant_from(self, answer: dict[str, Any], previous: Grant | None, started: float) -> Grant:
        token = answer.get("access_token")
        if not isinstance(token, str) or not token or len(token) > 16 * 1024:
            raise OAuthHttpError("the token endpoint's answer has no access_token")
        refresh = answer.get("refresh_token")
        lifetime = token_lifetime(answer)
        return Grant(token, refresh if isinstance(refresh, str) and refresh else
                     (previous.refresh_token if previous else None),
                     started + lifetime if lifetime is not None else None)

    async def _refresh(self, upstream: str, user: str, grant: Grant) -> Grant | None:
        """A refreshed grant; None when the refresh token is gone or refused (consent is needed again)."""
        if not grant.refresh_token:
            return None
        started = self.clock()
        try:
            answer = await self._token_call(upstream, {"grant_type": "refresh_token",
                                                       "refresh_token": grant.refresh_token})
            fresh = self._grant_from(answer, grant, started)
        except OAuthHttpError as exc:
            if exc.status in (400, 401):  # invalid_grant & co: the user must consent again
                log.info("upstream %s: refresh refused for a user (%s); asking for consent again", upstream,
                         exc.reason)
                await self._forget(upstream, user)
                return None
            if exc.timeout:
                raise UpstreamTimeout(upstream, f"refreshing the user's token: {exc.reason}") from None
            raise UpstreamUnavailable(upstream, f"refreshing the user's token: {exc.reason}") from None
        await self._save(upstream, user, fresh)
        return fresh

    def _due(self, upstream: str, grant: Grant) -> bool:
        margin = self.upstreams[upstream][1].refresh_margin
        return grant.expires_at is not None and grant.expires_at - self.clock() <= margin

    async def token(self, upstream: str, user: str, *, force_refresh: bool = False) -> str:
        """The user's access token for `upstream`, refreshed when needed; `ConsentRequired` without a grant.
        `force_refresh`: the upstream refused the current one (401)."""
        grant = await self._load(upstream, user)
        if grant is not None and not force_refresh and not self._due(upstream, grant):
            return grant.access_token
        key = (upstream, user)
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:  # one refresh per (user, upstream) at a time: the others use its result
            latest = await self._load(upstream, user, fresh=True)
            changed = latest is not None and (grant is None or latest.access_token != grant.access_token)
            if latest is not None and changed and not self._due(upstream, latest):
                return latest.access_token  # consented or refreshed meanwhile (here or on another replica)
            fresh = await self._refresh(upstream, user, latest) if latest is not None else None
        if len(self._locks) > MAX_CACHED:
            self._locks.clear()
        if fresh is None:
            raise await self.consent_needed(upstream, user)
        return fresh.access_token

    async def consent_needed(self, upstream: str, user: str) -> ConsentRequired:
        if not self.sealer.ready:
            raise UpstreamUnavailable(upstream, "the OAuth consent key is not loaded yet")
        await self.endpoints(upstream)  # a link that can only fail is no use: discovery problems show here
        _, cfg = self.upstreams[upstream]
        sealed, link = self.sealer.link(user, upstream, cfg.consent_seconds)
        key = (upstream, user)

        async def wait() -> bool:
            """Until a consent of this user for this upstream completed here (the event) or on another replica
            (the grant appears in the vault: checked every second), or this link expired."""
            if len(self._done) > MAX_CACHED:
                self._done.clear()  # the waiters still look in the vault every second
            done = self._done.setdefault(key, asyncio.Event())
            try:
                while (left := link.expires - self.clock()) > 0:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(min(left, POLL_SECONDS)):
                            await done.wait()
                    if done.is_set() or await self._load(upstream, user, fresh=True) is not None:
                        return True
                return False
            finally:
                if self._done.get(key) is done:
                    del self._done[key]  # other waiters of this key fall back to the vault look-up

        return ConsentRequired(upstream, f"{self.base}{CONSENT_PATH}{sealed}", "stile-" + link.nonce, wait)

    # -- the browser routes ------------------------------------------------------------------------------
    async def consent(self, sealed: str, secure: bool) -> Page:
        """GET /oauth/consent/<sealed>: check and consume the link, send the browser to the authorization server."""
        try:
            link = self.sealer.open_link(sealed)
            await self._claim("consent|" + link.nonce, link.expires)
        except ConsentRefused as exc:
            return _page(400, "Consent link refused", str(exc))
        if link.upstream not in self.upstreams:
            return _page(400, "Consent link refused", "this link names an upstream this gateway does not serve")
        url, cfg = self.upstreams[link.upstream]
        try:
            ends = await self.endpoints(link.upstream)
        except UpstreamUnavailable as exc:
            return _page(502, "Authorization server unavailable", exc.message)
        verifier, challenge = pkce_pair()
        binder = secrets.token_urlsafe(24)
        query = {"response_type": "code", "client_id": cfg.client_id, "redirect_uri": self.base + CALLBACK_PATH,
                 "state": self.sealer.state(link, verifier, binder), "code_challenge": challenge,
                 "code_challenge_method": "S256", "resource": url}
        if cfg.scopes:
            query["scope"] = " ".join(cfg.scopes)
        sep = "&" if "?" in ends.authorization else "?"
        max_age = int(max(1.0, link.expires - self.clock()))
        cookie = (f"{COOKIE}{link.nonce}={binder}; Path={CALLBACK_PATH}; Max-Age={max_age}; HttpOnly; "
                  f"SameSite=Lax{'; Secure' if secure else ''}")
        return Page(302, "", location=ends.authorization + sep + urlencode(query), cookie=cookie)

    async def callback(self, query: Mapping[str, str], cookies: Mapping[str, str]) -> Page:
        """GET /oauth/callback?code&state: check the state against this browser, exchange the code, store."""
        sealed = query.get("state", "")
        try:
            pending = self.sealer.open_state(sealed, lambda nonce: cookies.get(COOKIE + nonce))
            await self._claim("state|" + pending.nonce, pending.expires)
        except ConsentRefused as exc:
            return _page(400, "Authorization refused", str(exc))
        if pending.upstream not in self.upstreams:
            return _page(400, "Authorization refused", "unknown upstream")
        if "error" in query or not query.get("code"):
            return _page(400, "Authorization not granted", "the authorization server did not grant access; "
                         "ask the agent again to retry")
        _, cfg = self.upstreams[pending.upstream]
        started = self.clock()
        try:
            answer = await self._token_call(pending.upstream, {
                "grant_type": "authorization_code", "code": query["code"],
                "redirect_uri": self.base + CALLBACK_PATH, "code_verifier": pending.verifier})
            grant = self._grant_from(answer, None, started)
        except OAuthHttpError as exc:
            return _page(502, "Authorization failed", f"exchanging the code: {exc.reason}")
        except UpstreamUnavailable as exc:
            return _page(502, "Authorization failed", exc.message)
        if cfg.match_user and _subject(answer, grant) != pending.user:
            log.warning("upstream %s: a consent for one user was approved by another account; refused",
                        pending.upstream)
            return _page(403, "Wrong account", "this consent was approved with an account other than the one the "
                         "agent acts for; nothing was stored")
        try:
            await self._save(pending.upstream, pending.user, grant)
        except UpstreamUnavailable as exc:
            return _page(503, "Authorization not stored", f"{exc.message}; ask the agent again to retry")
        done = self._done.pop((pending.upstream, pending.user), None)
        if done is not None:
            done.set()  # wakes every call of this user waiting for this upstream
        return _page(200, "Access granted", f"Stile may now call {pending.upstream!r} for you. You can close "
                     "this window and return to the agent.")


def _subject(answer: dict[str, Any], grant: Grant) -> str | None:
    """Who approved: `sub` of the id_token, else of a JWT access token."""
    for token in (answer.get("id_token"), grant.access_token):
        claims = jwt_claims(token) if isinstance(token, str) else None
        if claims is not None and isinstance(claims.get("sub"), str):
            return str(claims["sub"])
    return None
