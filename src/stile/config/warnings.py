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
    for name, up in cfg.upstreams.items():
        if up.identity == "passthrough":
            warnings.append(f"{where}: upstreams.{name}: identity: passthrough sends each caller's own token to "
                            "this upstream (it can replay it wherever that token is accepted); prefer "
                            "token_exchange, user_oauth or assertion")
    return warnings
