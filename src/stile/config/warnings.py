"""Configs that load but cannot do anything useful: said out loud (a warning, not an error)."""

from __future__ import annotations

from stile.config.model import GatewayConfig


def config_warnings(cfg: GatewayConfig, where: str) -> list[str]:
    warnings = []
    if not cfg.upstreams:
        warnings.append(f"{where}: no upstreams: the gateway has nothing to forward to (add `upstreams:`)")
    if not cfg.virtual_servers:
        warnings.append(f"{where}: no virtual servers: the gateway serves no /mcp/<name> endpoint "
                        "(add `virtual_servers:`)")
    return warnings
