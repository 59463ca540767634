"""`identity: token_exchange`: RFC 8693 at the caller's IdP, one cached token per (user, upstream, scopes).

The caller's validated incoming token is the `subject_token`; Stile authenticates as the configured client
(`client_secret_basic`, the secret from the vault) and asks for the upstream's `audience` / `resource` and
`scopes`. A token is reused until `reuse_margin` seconds before it expires (without `expires_in`: not
reused); the cache holds at most `max_cached` tokens (least recently used go first). Failures are
`UpstreamError`s naming the upstream and the reason, never a token or the secret.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable

import aiohttp

from stile.config.upstream_identity import ACCESS_TOKEN_TYPE, TokenExchangeConfig
from stile.vault.oauth_http import OAuthHttpError, basic_auth, post_form, token_id, token_lifetime
from stile.wire.errors import UpstreamTimeout, UpstreamUnavailable

GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"


class TokenExchanger:
    def __init__(self, upstream: str, url: str, cfg: TokenExchangeConfig,
                 clock: Callable[[], float] = time.time) -> None:
        self.upstream = upstream
        self.cfg = cfg
        self.audience = cfg.audience or url
        self.resource = cfg.resource or url
        self.scope = " ".join(cfg.scopes)
        self.clock = clock
        self._cache: OrderedDict[tuple[str, str], tuple[str, str, float]] = OrderedDict()
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}

    def cached(self, user: str) -> tuple[str, str] | None:
        key = (user, self.scope)
        hit = self._cache.get(key)
        if hit is None:
            return None
        if hit[2] - self.clock() <= self.cfg.reuse_margin:
            del self._cache[key]
            return None
        self._cache.move_to_end(key)
        return hit[0], hit[1]

    def forget(self, user: str) -> None:
        self._cache.pop((user, self.scope), None)

    async def token(self, http: aiohttp.ClientSession, user: str, subject_token: str,
                    client_secret: str) -> tuple[str, str]:
        """(access token, its audit id) for `user` at this upstream."""
        hit = self.cached(user)
        if hit is not None:
            return hit
        key = (user, self.scope)
        lock = self._locks.setdefault(key, asyncio.Lock())
        try:
            async with lock:  # one exchange per (user, scopes) at a time: the others reuse its answer
                hit = self.cached(user)
                if hit is not None:
                    return hit
                return await self._exchange(http, key, subject_token, client_secret)
        finally:
            if not lock.locked() and len(self._locks) > self.cfg.max_cached:
                self._locks.pop(key, None)

    async def _exchange(self, http: aiohttp.ClientSession, key: tuple[str, str], subject_token: str,
                        client_secret: str) -> tuple[str, str]:
        form = {"grant_type": GRANT, "subject_token": subject_token,
                "subject_token_type": self.cfg.subject_token_type, "requested_token_type": ACCESS_TOKEN_TYPE,
                "audience": self.audience, "resource": self.resource}
        if self.scope:
            form["scope"] = self.scope
        started = self.clock()
        try:
            answer = await post_form(http, self.cfg.token_endpoint, form, timeout=self.cfg.timeout,
                                     authorization=basic_auth(self.cfg.client_id, client_secret),
                                     what="token exchange at the IdP")
        except OAuthHttpError as exc:
            if exc.timeout:
                raise UpstreamTimeout(self.upstream, exc.reason) from None
            raise UpstreamUnavailable(self.upstream, exc.reason) from None
        token = answer.get("access_token")
        kind = str(answer.get("token_type", "")).lower()
        if not isinstance(token, str) or not token or len(token) > 16 * 1024 or kind not in ("bearer", "n_a"):
            raise UpstreamUnavailable(self.upstream, "token exchange at the IdP: the answer has no usable "
                                      "access_token (bearer)")
        ident = token_id(token)
        lifetime = token_lifetime(answer)
        if lifetime is not None:
            if len(self._cache) >= self.cfg.max_cached:
                self._cache.popitem(last=False)
            self._cache[key] = (token, ident, started + lifetime)
        return token, ident
