"""Run the gateway under uvicorn (uvloop + httptools when available)."""

from __future__ import annotations

import logging

import uvicorn

from stile.assembly import assemble
from stile.config.model import GatewayConfig
from stile.config.paths import sqlite_state_problem
from stile.frontends.app import StileApp
from stile.frontends.protocol import http_protocol
from stile.identity.audience import audience_warning
from stile.observe.audit_wal import WalError
from stile.observe.audit_writers import WriterIdError
from stile.vault.keyring import VaultError

log = logging.getLogger("stile")
PUBLIC_METRICS_WARNING = ("metrics.public: true: /metrics is served to anyone who can reach the gateway "
                          "(tool, upstream and virtual server names, traffic volumes)")


def build_app(cfg: GatewayConfig, host: str = "127.0.0.1", state_url: str | None = None) -> StileApp:
    runtime = assemble(cfg, state_url)
    for name, vs in cfg.virtual_servers.items():
        if vs.auth is None:
            log.info("virtual server %s requires authentication (API key or bearer token)", name)
        elif vs.auth == "none":
            log.warning("virtual server %s: auth: none (anonymous access)", name)
    if cfg.metrics.public:
        log.warning(PUBLIC_METRICS_WARNING)
    warning = audience_warning(cfg, host)
    if warning:
        log.warning("%s", warning)
    log.info("session key: %s", runtime.gateway.key_source)
    return StileApp(runtime, bind_host=host, state_url=state_url)


def run(cfg: GatewayConfig, *, host: str, port: int, log_level: str = "info", state_url: str | None = None) -> None:
    prepare(cfg, host=host, port=port, log_level=log_level, state_url=state_url).run()


def prepare(cfg: GatewayConfig, *, host: str, port: int, log_level: str = "info", state_url: str | None = None
            ) -> uvicorn.Server:
    """The gateway's app under a uvicorn server, not yet serving (`stile.workers.worker` serves a shared socket)."""
    problem = sqlite_state_problem(state_url or cfg.state)
    if problem is not None:
        raise SystemExit(f"error: {problem}: fix it or point `state:` elsewhere")
    try:
        app = build_app(cfg, host, state_url)
    except (VaultError, WriterIdError) as exc:
        raise SystemExit(f"error: {exc}") from None
    vault = app.runtime.vault
    if vault is not None and not cfg.public_url:  # the assertions' issuer: the gateway's own URL
        vault.issuer = f"http://{host if ':' not in host else f'[{host}]'}:{port}"
    try:
        app.audit.preflight()
    except WalError as exc:
        raise SystemExit(f"error: {exc}") from None
    config = uvicorn.Config(app, host=host, port=port, loop="auto", http=http_protocol(cfg.limits), lifespan="on",
                            log_level=log_level, access_log=False, timeout_keep_alive=30,
                            timeout_graceful_shutdown=5,
                            # uvicorn would otherwise take X-Forwarded-For from 127.0.0.1 as the peer; Stile
                            # decides itself whom to believe (`trusted_proxies`, wire/forwarded.py)
                            proxy_headers=False)
    return uvicorn.Server(config)
