"""`stile screen`: discover the upstreams and print the screen's verdict on every tool, prompt, resource and
resource template definition.

For review: a quarantined definition is released by adding its digest to `policies.screen.approved`
(the digest covers the whole definition as the virtual server exposes it, so a changed definition is
screened, and quarantined, again).
"""

from __future__ import annotations

import json
from collections.abc import Iterator

from rich.console import Console
from rich.table import Table

from stile.config.model import GatewayConfig
from stile.core.catalog import Item, View
from stile.core.gateway import Gateway
from stile.policies.screen import Screen, ScreenConfig


def _definitions(view: View) -> Iterator[tuple[str, str, Item, str]]:
    """(kind, exposed name or URI, definition, upstream.original) of every tool, prompt, resource and template."""
    for kind, items, index in (("tool", view.tools, view.tool_index), ("prompt", view.prompts, view.prompt_index)):
        for item in items:
            target = index.get(item.get("name", ""))
            if target is not None:
                yield kind, item["name"], item, f"{target.upstream}.{target.original}"
    for kind, key, items, uris in (("resource", "uri", view.resources, view.resource_index),
                                   ("resource template", "uriTemplate", view.templates, view.template_index)):
        for item in items:
            hit = uris.get(item.get(key, ""))
            if hit is not None:
                yield kind, item[key], item, f"{hit[0]}.{hit[1]}"


async def review(cfg: GatewayConfig, out: Console, *, as_json: bool = False, only_hits: bool = False) -> int:
    """Print the verdicts; return how many definitions are hits that are not approved."""
    screen_cfg = ScreenConfig.model_validate(cfg.policies.get("screen") or {})
    gw = Gateway(cfg)
    pending = 0
    rows: list[dict[str, object]] = []
    try:
        await gw.start()
        await gw.wait_discovered()  # start() returns at once: discovery runs in the background
        screen = Screen(screen_cfg, gw, list(cfg.virtual_servers))
        for view in gw.views.values():
            for kind, exposed, item, ref in _definitions(view):
                digest, hits = screen.definition_hits(item)
                approved = digest in screen.approved
                if hits and not approved:
                    pending += 1
                if only_hits and not hits:
                    continue
                rows.append({"virtual_server": view.name, "kind": kind, "exposed": exposed, "ref": ref,
                             "hits": list(hits), "approved": approved, "digest": digest})
    finally:
        await gw.stop()
    if as_json:
        for row in rows:
            out.print(json.dumps(row), highlight=False, soft_wrap=True)
        return pending
    table = Table(title="screen verdicts (approve with policies.screen.approved: [digest])")
    for col in ("virtual server", "kind", "exposed", "upstream.name", "hits", "digest"):
        table.add_column(col, overflow="fold")
    for row in rows:
        found = ",".join(str(h) for h in row["hits"]) if isinstance(row["hits"], list) else ""
        shown = "approved" if row["approved"] and found else (found or "-")
        table.add_row(str(row["virtual_server"]), str(row["kind"]), str(row["exposed"]), str(row["ref"]), shown,
                      str(row["digest"]))
    out.print(table)
    out.print(f"{pending} definition(s) hit and not approved")
    return pending
