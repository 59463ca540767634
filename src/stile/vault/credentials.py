"""`VaultCredentials`: the vault seen by the upstreams (`upstreams.credentials.Credentials`).

Secrets referenced as ``${secret:NAME}`` in an upstream's `headers` or `env` are read from the vault at
start and re-read every `vault.cache_seconds` (default 5 s) by one background task, so a rotation takes
effect without a restart and no request waits on the database. Headers are resolved from that cache on
every request; stdio env at each (re)spawn. A failed refresh keeps the last good values (and logs why).
The `Scrubber` is fed the current values; answers from an upstream that receives secrets are scrubbed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp
from sqlalchemy.exc import SQLAlchemyError

from stile.config.model import GatewayConfig, UpstreamConfig
from stile.stores.revocations import RevocationStore
from stile.tasks import spawn
from stile.upstreams.credentials import SERVICE, Caller
from stile.vault.assertion import SERVICE_SUBJECT, SIGNING_KEY, Minter, new_signing_key, token_id_hash
from stile.vault.consent_seal import OAUTH_KEY, new_oauth_key
from stile.vault.exchange import TokenExchanger
from stile.vault.keyring import VaultError
from stile.vault.oauth_http import token_id
from stile.vault.scrub import Scrubber
from stile.vault.store import SecretStore
from stile.vault.user_oauth import UserOAuth
from stile.wire.errors import UpstreamUnavailable
from stile.wire.jsonrpc import Message

log = logging.getLogger("stile.vault")
SECRET_REF = re.compile(r"\$\{secret:([^}]*)\}")


def _client_secrets(up: UpstreamConfig) -> list[str]:
    found = [up.token_exchange.client_secret if up.token_exchange else None,
             up.oauth.client_secret if up.oauth else None]
    return [v for v in found if v is not None]


def references(cfg: GatewayConfig) -> dict[str, set[str]]:
    """upstream -> the secret names its headers, env and OAuth client secret reference."""
    out: dict[str, set[str]] = {}
    for name, up in cfg.upstreams.items():
        values = (*up.headers.values(), *up.env.values(), *_client_secrets(up))
        names = {m.group(1) for v in values for m in SECRET_REF.finditer(v)}
        if names:
            out[name] = names
    return out


VAULT_MODES = ("assertion", "token_exchange", "user_oauth")


def needs_vault(cfg: GatewayConfig) -> bool:
    return bool(references(cfg)) or any(u.identity in VAULT_MODES for u in cfg.upstreams.values())


class VaultCredentials:
    def __init__(self, cfg: GatewayConfig, store: SecretStore, scrubber: Scrubber | None = None,
                 used: RevocationStore | None = None) -> None:
        self.store = store
        self.refs = references(cfg)
        self.audiences = {n: u.url or "" for n, u in cfg.upstreams.items() if u.identity == "assertion"}
        self.exchangers = {n: TokenExchanger(n, u.url or "", u.token_exchange)
                           for n, u in cfg.upstreams.items() if u.token_exchange is not None}
        self.passthrough = {n for n, u in cfg.upstreams.items() if u.identity == "passthrough"}
        oauth = {n: (u.url or "", u.oauth) for n, u in cfg.upstreams.items() if u.oauth is not None}
        self.oauth = UserOAuth(oauth, store, self._expand, cfg.vault.cache_seconds, used=used) if oauth else None
        self._http: aiohttp.ClientSession | None = None
        self.issuer = (cfg.public_url or "").rstrip("/") or SERVICE_SUBJECT  # the server sets its URL
        self.cache_seconds = cfg.vault.cache_seconds
        self.scrubber = scrubber or Scrubber()
        self.minter = Minter()
        self._values: dict[str, str] = {}
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.scrubber.install()
        await self.refresh()
        if self._task is None:
            self._task = spawn(self._loop(), name="vault-refresh")

    @property
    def issuer(self) -> str:
        """The gateway's public base URL: the assertions' issuer and the consent links' origin."""
        return self._issuer

    @issuer.setter
    def issuer(self, value: str) -> None:
        self._issuer = value
        if self.oauth is not None:
            self.oauth.base = value

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._http is not None:
            await self._http.close()
        if self.oauth is not None:
            await self.oauth.aclose()
        self.scrubber.uninstall()
        await self.store.aclose()

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.cache_seconds)
            await self.refresh()

    async def refresh(self) -> None:
        wanted = set().union(*self.refs.values()) if self.refs else set()
        try:
            raw = await self.store.latest(wanted)
            if self.audiences:
                versions = await self.store.versions(SIGNING_KEY)
                if not versions:
                    with contextlib.suppress(VaultError):  # another replica created it first: use theirs
                        await self.store.set(SIGNING_KEY, new_signing_key())  # version 1 only: one winner
                    versions = await self.store.versions(SIGNING_KEY)
                self.minter.load([v for _, v in versions])
            if self.oauth is not None:
                self.oauth.sealer.load(await self._own_key(OAUTH_KEY, new_oauth_key))
        except (VaultError, SQLAlchemyError, OSError, ValueError) as exc:  # ValueError: a malformed own key
            log.warning("vault refresh failed (keeping the last values): %s", exc)
            return
        values = {k: v.decode("utf-8", "replace") for k, v in raw.items()}
        for name in sorted(wanted - set(values)):
            if name not in self._values:
                log.warning("secret %r is referenced but not in the vault (stile secrets set %s)", name, name)
        self._values = values
        self.scrubber.update(list(self._values.values()))

    async def _own_key(self, name: str, make: Callable[[], bytes]) -> bytes:
        """Stile's own key `name`, created (version 1, one winner among replicas) when missing."""
        versions = await self.store.versions(name, limit=1)
        if not versions:
            with contextlib.suppress(VaultError):
                await self.store.set(name, make())
            versions = await self.store.versions(name, limit=1)
        return versions[0][1]

    def _expand(self, upstream: str, text: str) -> str:
        def sub(m: re.Match[str]) -> str:
            got = self._values.get(m.group(1))
            if got is None:
                raise UpstreamUnavailable(upstream, f"secret {m.group(1)!r} is not in the vault")
            return got

        return SECRET_REF.sub(sub, text)

    def _client(self) -> aiohttp.ClientSession:
        if self._http is None:
            self._http = aiohttp.ClientSession()
        return self._http

    async def prepare(self, upstream: str, caller: Caller) -> None:
        """The per-caller token of a token_exchange / user_oauth / passthrough upstream, into `caller.bearer`."""
        exchanger = self.exchangers.get(upstream)
        if exchanger is not None:
            if caller.token is None or caller.user is None:
                raise UpstreamUnavailable(upstream, "identity: token_exchange needs a caller signed in with a "
                                          "bearer token (not an API key)")
            hit = exchanger.cached(caller.user)  # the hot path: no secret expansion, no lock
            if hit is None:
                secret = self._expand(upstream, exchanger.cfg.client_secret)
                hit = await exchanger.token(self._client(), caller.user, caller.token, secret)
            token, ident = hit
            caller.bearer = token
            caller.used = {"mode": "token_exchange", "subject": caller.user, "token_id": ident}
        elif self.oauth is not None and upstream in self.oauth.upstreams:
            if caller.user is None:
                raise UpstreamUnavailable(upstream, "identity: user_oauth needs a signed-in user (a token with "
                                          "a subject), not an API key")
            token = await self.oauth.token(upstream, caller.user)
            caller.bearer = token
            caller.used = {"mode": "user_oauth", "subject": caller.user, "token_id": token_id(token)}
        elif upstream in self.passthrough:
            if caller.token is None:
                raise UpstreamUnavailable(upstream, "identity: passthrough needs a caller with a bearer token")
            caller.bearer = caller.token
            caller.used = {"mode": "passthrough", "subject": caller.user, "token_id": token_id(caller.token)}

    async def rejected(self, upstream: str, caller: Caller) -> bool:
        """A 401 to a per-caller token: exchange again / refresh the user's token once."""
        exchanger = self.exchangers.get(upstream)
        if exchanger is not None and caller.user is not None:
            exchanger.forget(caller.user)
            await self.prepare(upstream, caller)
            return True
        if self.oauth is not None and upstream in self.oauth.upstreams and caller.user is not None:
            token = await self.oauth.token(upstream, caller.user, force_refresh=True)
            caller.bearer = token
            caller.used = {"mode": "user_oauth", "subject": caller.user, "token_id": token_id(token)}
            return True
        return False

    def headers(self, upstream: str, configured: Mapping[str, str],
                caller: Caller | None = None) -> Mapping[str, str]:
        out: Mapping[str, str] = ({k: self._expand(upstream, v) for k, v in configured.items()}
                                  if upstream in self.refs else configured)
        if caller is not None and caller.bearer is not None:  # prepared: a token for this very caller
            sent = {k: v for k, v in out.items() if k.lower() != "authorization"}
            sent["Authorization"] = f"Bearer {caller.bearer}"
            return sent
        audience = self.audiences.get(upstream)
        if audience is None:
            if caller is not None:
                caller.used = SERVICE
            return out
        if not self.minter.ready:
            raise UpstreamUnavailable(upstream, "no signing key for identity assertions yet")
        user = caller.user if caller is not None else None
        agent = caller.agent if caller is not None else None
        subject = user or agent or SERVICE_SUBJECT
        token, jti = self.minter.mint(self.issuer, subject, agent, audience, caller.scope if caller else "")
        sent = {k: v for k, v in out.items() if k.lower() != "authorization"}
        sent["Authorization"] = f"Bearer {token}"
        if caller is not None:
            caller.used = {"mode": "assertion", "subject": subject, "token_id": token_id_hash(jti)}
        return sent

    def env(self, upstream: str, configured: Mapping[str, str]) -> dict[str, str]:
        if upstream not in self.refs:
            return dict(configured)
        return {k: self._expand(upstream, v) for k, v in configured.items()}

    def scrub(self, upstream: str, msg: Message) -> Message:
        if upstream in self.refs and self.scrubber.active:
            cleaned: Any = self.scrubber.scrub(msg)
            return cleaned  # type: ignore[no-any-return]
        return msg

    def scrub_text(self, upstream: str, text: str) -> str:
        return self.scrubber.scrub_text(text) if upstream in self.refs else text

    def jwks(self) -> dict[str, Any]:
        return self.minter.jwks()
