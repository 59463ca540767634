"""`stile check`: validate, discover, and show the resolved surface of every virtual server."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from stile.config.model import GatewayConfig
from stile.core.catalog import upstreams_of
from stile.core.gateway import Gateway


async def report(cfg: GatewayConfig, out: Console, *, offline: bool = False) -> list[str]:
    """Print the surface; return the problems found (collisions, unmatched allows, unreachable)."""
    problems: list[str] = []
    if cfg.metrics.public:
        out.print("[yellow]warning[/yellow] metrics.public: true: /metrics is served to anyone who can reach "
                  "the gateway", highlight=False, soft_wrap=True)
    if offline:
        for name, vs in cfg.virtual_servers.items():
            out.print(f"[bold]{name}[/bold]: upstreams {', '.join(upstreams_of(vs, cfg)) or '(none)'}")
        out.print("config OK (offline: upstreams not contacted)")
        return problems
    gw = Gateway(cfg)
    try:
        await gw.start()
        await gw.wait_discovered()  # start() does not wait; each failure ends fast (refused, exit code...)
        for name, inv in gw.inventories.items():
            if not inv.ok:
                problems.append(f"upstream {name}: {inv.error}")
        for view in gw.views.values():
            table = Table(title=f"virtual server {view.name}  (/mcp/{view.name})")
            for col in ("kind", "exposed", "upstream", "original"):
                table.add_column(col)
            for exposed, t in view.tool_index.items():
                table.add_row("tool", exposed, t.upstream, t.original)
            for exposed, t in view.prompt_index.items():
                table.add_row("prompt", exposed, t.upstream, t.original)
            for item in view.resources:
                hit = view.resolve_uri(item["uri"])
                table.add_row("resource", item["uri"], hit[0] if hit else "?", hit[1] if hit else "?")
            for item in view.templates:
                hit = view.resolve_uri(item["uriTemplate"])
                table.add_row("template", item["uriTemplate"], hit[0] if hit else "?", hit[1] if hit else "?")
            out.print(table)
            problems.extend(f"virtual server {view.name}: {p}" for p in view.problems)
    finally:
        await gw.stop()
    for p in problems:
        out.print(f"[yellow]problem[/yellow] {p}", highlight=False, soft_wrap=True)
    if not problems:
        out.print("config OK")
    return problems
