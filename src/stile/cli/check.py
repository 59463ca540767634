"""`stile check`: validate, discover, and show the resolved surface of every virtual server.

`surface()` gathers it as plain data (what `--json` prints); `report()` prints it as tables. Off a
terminal the tables are as wide as their content, so names are never cut (pipes, CI logs).
"""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console
from rich.table import Table

from stile.config.model import GatewayConfig
from stile.core.catalog import View, upstreams_of
from stile.core.gateway import Gateway
from stile.governance.lookalike import Tool, pairs
from stile.upstreams.credentials import NO_CREDENTIALS, Credentials
from stile.vault.keyring import VaultError

PUBLIC_METRICS = "metrics.public: true: /metrics is served to anyone who can reach the gateway"


def console() -> Console:
    """stdout; not a terminal: wide enough for any row (rich would otherwise cut names at 80 columns)."""
    out = Console(soft_wrap=False)
    if not out.is_terminal:
        out.width = 10_000
    return out


async def surface(cfg: GatewayConfig, *, offline: bool = False, state_url: str | None = None) -> dict[str, Any]:
    """The config's upstreams (status, error) and virtual servers (upstreams, tools, prompts, resources,
    templates, problems), plus every problem found and the warnings.

    Upstreams are probed as `serve` would call them: `${secret:NAME}` references are resolved from the vault
    (never sent literally); without a usable master key the check reports that and contacts no upstream."""
    data: dict[str, Any] = {"offline": offline, "warnings": [PUBLIC_METRICS] if cfg.metrics.public else [],
                            "upstreams": {}, "virtual_servers": {}, "problems": []}
    if offline:
        data["upstreams"] = {name: {"status": "not contacted", "error": None} for name in cfg.upstreams}
        for name, vs in cfg.virtual_servers.items():
            data["virtual_servers"][name] = {"path": f"/mcp/{name}", "upstreams": upstreams_of(vs, cfg)}
        return data
    from stile.assembly import build_vault  # the composition root; imported late, only when probing

    try:
        vault = build_vault(cfg, state_url)
    except VaultError as exc:
        data["problems"].append(f"vault: {exc}")
        data["upstreams"] = {name: {"status": "not contacted", "error": None} for name in cfg.upstreams}
        return data
    creds: Credentials = vault if vault is not None else NO_CREDENTIALS
    gw = Gateway(cfg, credentials=creds)
    try:
        if vault is not None:
            await vault.start()
        await gw.start()
        await gw.wait_discovered()  # start() does not wait; each failure ends fast (refused, exit code...)
        for name, inv in gw.inventories.items():
            data["upstreams"][name] = {"status": "ok" if inv.ok else "error", "error": None if inv.ok else inv.error}
            if not inv.ok:
                data["problems"].append(f"upstream {name}: {inv.error}")
        for view in gw.views.values():
            def at(uri: str, view: View = view) -> tuple[str | None, str | None]:
                hit = view.resolve_uri(uri)
                return (hit[0], hit[1]) if hit else (None, None)

            data["virtual_servers"][view.name] = {
                "path": f"/mcp/{view.name}", "upstreams": upstreams_of(cfg.virtual_servers[view.name], cfg),
                "tools": [row(e, t.upstream, t.original) for e, t in view.tool_index.items()],
                "prompts": [row(e, t.upstream, t.original) for e, t in view.prompt_index.items()],
                "resources": [row(i["uri"], *at(i["uri"])) for i in view.resources],
                "templates": [row(i["uriTemplate"], *at(i["uriTemplate"])) for i in view.templates],
                "problems": list(view.problems),
            }
            data["problems"].extend(f"virtual server {view.name}: {p}" for p in view.problems)
        tools = [Tool(up, t["name"], t.get("description")) for up, inv in gw.inventories.items() for t in inv.tools
                 if isinstance(t.get("name"), str)]
        data["warnings"].extend(f"lookalike: {pair.message()}" for pair in pairs(tools))
    finally:
        await gw.stop()
        if vault is not None:
            await vault.aclose()
    if vault is not None:  # upstream errors may quote what a server printed (a stdio server's stderr tail)
        scrubbed: dict[str, Any] = vault.scrubber.scrub(data)
        return scrubbed
    return data


def row(exposed: str, upstream: str | None, original: str | None) -> dict[str, str | None]:
    return {"exposed": exposed, "upstream": upstream, "original": original}


def print_json(data: dict[str, Any]) -> None:
    print(json.dumps(data, indent=2))


def print_report(data: dict[str, Any], out: Console) -> None:
    for warning in data["warnings"]:
        out.print(f"[yellow]warning[/yellow] {warning}", highlight=False, soft_wrap=True)
    if data["offline"]:
        for name, vs in data["virtual_servers"].items():
            out.print(f"[bold]{name}[/bold]: upstreams {', '.join(vs['upstreams']) or '(none)'}", highlight=False)
        out.print("config OK (offline: upstreams not contacted)")
        return
    for name, vs in data["virtual_servers"].items():
        table = Table(title=f"virtual server {name}  ({vs['path']})")
        for col in ("kind", "exposed", "upstream", "original"):
            table.add_column(col, overflow="fold")
        for kind in ("tool", "prompt", "resource", "template"):
            for r in vs[f"{kind}s"]:
                table.add_row(kind, r["exposed"], r["upstream"] or "?", r["original"] or "?")
        out.print(table)
    for p in data["problems"]:
        out.print(f"[yellow]problem[/yellow] {p}", highlight=False, soft_wrap=True)
    if not data["problems"]:
        out.print("config OK")


async def report(cfg: GatewayConfig, out: Console, *, offline: bool = False) -> list[str]:
    """Print the surface; return the problems found (collisions, unmatched allows, unreachable)."""
    data = await surface(cfg, offline=offline)
    print_report(data, out)
    return list(data["problems"])
