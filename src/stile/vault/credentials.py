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
from collections.abc import Mapping
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from stile.config.model import GatewayConfig
from stile.tasks import spawn
from stile.upstreams.credentials import SERVICE, Caller
from stile.vault.assertion import SERVICE_SUBJECT, SIGNING_KEY, Minter, new_signing_key, token_id_hash
from stile.vault.keyring import VaultError
from stile.vault.scrub import Scrubber
from stile.vault.store import SecretStore
from stile.wire.errors import UpstreamUnavailable
from stile.wire.jsonrpc import Message

log = logging.getLogger("stile.vault")
SECRET_REF = re.compile(r"\$\{secret:([^}]*)\}")


def references(cfg: GatewayConfig) -> dict[str, set[str]]:
    """upstream -> the secret names its headers and env reference."""
    out: dict[str, set[str]] = {}
    for name, up in cfg.upstreams.items():
        names = {m.group(1) for v in (*up.headers.values(), *up.env.values()) for m in SECRET_REF.finditer(v)}
        if names:
            out[name] = names
    return out


def needs_vault(cfg: GatewayConfig) -> bool:
    return bool(references(cfg)) or any(u.identity == "assertion" for u in cfg.upstreams.values())


class VaultCredentials:
    def __init__(self, cfg: GatewayConfig, store: SecretStore, scrubber: Scrubber | None = None) -> None:
        self.store = store
        self.refs = references(cfg)
        self.audiences = {n: u.url or "" for n, u in cfg.upstreams.items() if u.identity == "assertion"}
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

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
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
        except (VaultError, SQLAlchemyError, OSError) as exc:
            log.warning("vault refresh failed (keeping the last values): %s", exc)
            return
        values = {k: v.decode("utf-8", "replace") for k, v in raw.items()}
        for name in sorted(wanted - set(values)):
            if name not in self._values:
                log.warning("secret %r is referenced but not in the vault (stile secrets set %s)", name, name)
        self._values = values
        self.scrubber.update(list(self._values.values()))

    def _expand(self, upstream: str, text: str) -> str:
        def sub(m: re.Match[str]) -> str:
            got = self._values.get(m.group(1))
            if got is None:
                raise UpstreamUnavailable(upstream, f"secret {m.group(1)!r} is not in the vault")
            return got

        return SECRET_REF.sub(sub, text)

    def headers(self, upstream: str, configured: Mapping[str, str],
                caller: Caller | None = None) -> Mapping[str, str]:
        out: Mapping[str, str] = ({k: self._expand(upstream, v) for k, v in configured.items()}
                                  if upstream in self.refs else configured)
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
