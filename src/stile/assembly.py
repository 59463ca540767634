"""The composition root: builds the gateway, its observers and each virtual server's policy chain.

Nothing below this module wires services together: `core` knows views, upstreams and the router,
`observe` knows what to record, `policies` know how to decide, and the frontends get a `Runtime`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stile.config.model import GatewayConfig
from stile.core.gateway import Gateway
from stile.governance.pinning import PinEvent, Pinning
from stile.observe.audit import AuditLog
from stile.observe.audit_sinks import JsonlSink, Sink, StdoutSink
from stile.observe.audit_store import StoreSink
from stile.observe.audit_writers import chain_for, other_wal_dirs, spool_path, wal_dir, writer_id
from stile.observe.metrics import Metrics
from stile.observe.observers import Observers
from stile.observe.spool import SpooledSink
from stile.observe.tracing import Tracing
from stile.policies.registry import PolicyDeps, build_chains
from stile.stores.pins import open_pin_store
from stile.stores.revocations import open_revocation_store
from stile.upstreams.credentials import NO_CREDENTIALS, Credentials
from stile.vault.credentials import VaultCredentials, needs_vault
from stile.vault.keyring import load_keyring
from stile.vault.store import SecretStore
from stile.vault.user_oauth import USED_CONSENTS_TABLE, UserOAuth
from stile.wire.forwarded import ClientAddress

log = logging.getLogger("stile.gateway")


@dataclass
class Runtime:
    """A gateway with its observers, started and stopped as one."""

    cfg: GatewayConfig
    gateway: Gateway
    observers: Observers
    state_url: str | None
    policies: list[Any] = field(default_factory=list)  # policies with their own start()/aclose()
    pinning: Pinning | None = None
    vault: VaultCredentials | None = None  # when some upstream references a secret or uses identity assertions

    async def start(self) -> None:
        if self.vault is not None:
            await self.vault.start()  # before the upstreams: their headers and env need the secrets
        await self.observers.audit.start()
        for policy in self.policies:
            await policy.start()
        await self.gateway.start()
        if self.pinning is not None:
            await self.pinning.start()

    def jwks(self) -> dict[str, Any]:
        """The public keys identity assertions are signed with (empty without a vault)."""
        return self.vault.jwks() if self.vault is not None else {"keys": []}

    def consent_flow(self) -> UserOAuth | None:
        """The browser side of `identity: user_oauth` (None when no upstream uses it)."""
        return self.vault.oauth if self.vault is not None else None

    async def stop(self) -> None:
        if self.pinning is not None:
            await self.pinning.aclose()
        await self.gateway.stop()
        for policy in self.policies:
            await policy.aclose()
        if self.vault is not None:
            await self.vault.aclose()
        await self.observers.audit.aclose()
        await self.observers.tracing.aclose()  # flush the last spans: uvicorn's SIGTERM exit skips atexit handlers


def assemble(cfg: GatewayConfig, state_url: str | None = None) -> Runtime:
    """Raises `stile.vault.keyring.VaultError` when secrets are referenced but no master key is configured."""
    tracing = Tracing(cfg.tracing)
    pinning = None
    if cfg.governance.pinning != "off":
        pinning = Pinning(cfg.governance, open_pin_store(state_url or cfg.state), lambda e: report(e))

    vault = build_vault(cfg, state_url)
    creds: Credentials = vault if vault is not None else NO_CREDENTIALS
    gw = Gateway(cfg, spans=tracing, state_url=state_url, inventory_filter=pinning, credentials=creds)
    writer = writer_id()
    spool_dir = audit_spool_dir(cfg, state_url)
    audit = AuditLog(audit_sinks(cfg, state_url, writer), arguments=cfg.audit.arguments,
                     per_server={n: vs.audit_arguments for n, vs in cfg.virtual_servers.items()
                                 if vs.audit_arguments is not None},
                     costs=cfg.costs, queue_size=cfg.audit.queue_size,
                     client_address=ClientAddress(cfg.trusted_proxies),
                     wal_dir=wal_dir(spool_dir, writer), wal_adopt=tuple(other_wal_dirs(spool_dir, writer)),
                     durability=cfg.audit.durability)
    observers = Observers(Metrics(gw, audit=audit, max_series=cfg.limits.max_metric_series), audit, tracing)
    deps = PolicyDeps(cfg, gw, observers, gw.upstream_listeners.append, state_url, bus=gw.bus)
    gw.install_chains(build_chains(deps, gw.router.handle))
    if cfg.audit.retention is not None and cfg.audit.store and state_url:
        from stile.observe.audit_retention import Pruner  # only deployments that prune load it

        pruner = Pruner(state_url, cfg.audit.retention, cfg.vault, spool_dir)
        observers.metrics.retention = pruner
        deps.lifecycle.append(pruner)

    def report(event: PinEvent) -> None:
        observers.metrics.pin_event(event.upstream, event.kind, event.status, event.action)
        reason = event.detail or f"{event.kind} definition {event.status}; {event.action} until approved"
        audit.record_event(f"pins/{event.status}", event.action, reason, upstream=event.upstream, name=event.name,
                           tool=event.ref, extra={"pin": {"kind": event.kind, "hash": event.digest or None,
                                                          "approved": event.approved}})

    if pinning is not None:
        pinning.on_change = lambda upstream: rediscover(gw, upstream)
    return Runtime(cfg, gw, observers, state_url, deps.lifecycle, pinning, vault)


async def rediscover(gw: Gateway, upstream: str) -> None:
    """Re-discover an upstream whose pins changed and tell the clients of its views their lists changed."""
    await gw.refresh(upstream)
    for view in gw.views.values():
        if upstream in view.upstreams:
            gw.hub.publish_lists_changed(view.name)
def build_vault(cfg: GatewayConfig, state_url: str | None) -> VaultCredentials | None:
    if not needs_vault(cfg):
        return None
    url = state_url or cfg.state or "sqlite:///stile.db"
    oauth = any(u.identity == "user_oauth" for u in cfg.upstreams.values())
    used = open_revocation_store(url, table=USED_CONSENTS_TABLE) if oauth else None  # consent links: used once
    return VaultCredentials(cfg, SecretStore(url, load_keyring(cfg.vault)), used=used)


def audit_sinks(cfg: GatewayConfig, state_url: str | None, writer: str | None = None) -> list[Sink]:
    """The configured audit sinks, each behind its own spool (the store one only when a state URL is known).
    The store sink seals this writer's chain (`audit_writers`); each writer has its own spool files."""
    audit = cfg.audit
    writer = writer or writer_id()
    inner: list[Sink] = []
    if audit.store and state_url:
        inner.append(StoreSink(state_url, chain_for(audit.chain, writer)))
    if audit.jsonl:
        inner.append(JsonlSink(Path(audit.jsonl), fsync=audit.durability == "fsync"))
    if audit.stdout:
        inner.append(StdoutSink())
    spool_dir = audit_spool_dir(cfg, state_url)
    return [SpooledSink(sink, spool_path(spool_dir, sink.name, writer), retry_seconds=audit.retry_seconds)
            for sink in inner]


def audit_spool_dir(cfg: GatewayConfig, state_url: str | None) -> Path:
    """`audit.spool_dir`, else the default; the audit write-ahead log lives in its `wal` subdirectory."""
    return Path(cfg.audit.spool_dir) if cfg.audit.spool_dir else default_spool_dir(state_url)


def default_spool_dir(state_url: str | None) -> Path:
    """`audit-spool` beside a SQLite state database, else in the working directory."""
    if state_url and state_url.startswith("sqlite:///"):
        return Path(state_url.removeprefix("sqlite:///")).resolve().parent / "audit-spool"
    return Path.cwd() / "audit-spool"
