"""`stile pins list | diff | approve | revoke`: review and approve tool definitions in the state store.

Approvals are rows in the state store's `stile_pins` table; running gateways pick them up at their next
discovery of the upstream or within `governance.pin_poll_seconds` (see docs/governance.md).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer

from stile.cli.keys import DEFAULT_STATE, ConfigOpt, StateOpt, _state
from stile.cli.stores import fail, load_or_fail, run_on_store
from stile.config.governance import GovernanceConfig, format_ref, parse_ref
from stile.governance.diff import definition_diff
from stile.stores.pins import SEEN, PinRow, PinStore, open_pin_store

T = TypeVar("T")
pins_app = typer.Typer(help="Review and approve pinned tool definitions.", no_args_is_help=True,
                       add_completion=False)


def _governance(config: Path | None) -> GovernanceConfig:
    if config is None:
        return GovernanceConfig()
    return load_or_fail(config).config.governance


def _run(state: str, action: Callable[[PinStore], Awaitable[T]]) -> T:
    return run_on_store(state, lambda: open_pin_store(state), action)


def status(row: PinRow, config_pin: str | None = None) -> str:
    approved = config_pin or row.approved
    if row.pending is None or row.pending == approved:
        return "approved" if approved else "unapproved"
    return "changed" if approved else "new"


def _short(digest: str | None) -> str:
    return "-" if not digest else digest[:19]


def _items(rows: list[PinRow]) -> list[PinRow]:
    return [r for r in rows if r.kind != SEEN]


def _find(rows: list[PinRow], ref: str) -> PinRow:
    try:
        kind, upstream, name = parse_ref(ref)
    except ValueError as exc:
        raise fail(str(exc), 2) from exc
    hits = [r for r in _items(rows) if r.upstream == upstream and r.name == name and kind in (None, r.kind)]
    if not hits:
        raise fail(f"no pinned definition named {ref!r} (see `stile pins list`)")
    if kind is None and any(h.kind == "tool" for h in hits):
        return next(h for h in hits if h.kind == "tool")  # tools are the default kind
    if len(hits) > 1:
        raise fail(f"{ref!r} names a {' and a '.join(h.kind for h in hits)}: say which, e.g. "
                    f"{format_ref(hits[1].kind, upstream, name)!r}", 2)
    return hits[0]


def _config_pin(gov: GovernanceConfig, row: PinRow) -> str | None:
    return gov.pin_index().get((row.kind, row.upstream, row.name))


@pins_app.command("list")
def list_pins(
    state: StateOpt = DEFAULT_STATE,
    config: ConfigOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
    upstream: Annotated[str | None, typer.Option("--upstream", help="only this upstream")] = None,
) -> None:
    """List every pinned definition and its status (approved, changed, new, unapproved)."""
    gov = _governance(config)
    rows = _items(_run(_state(state, config), lambda s: s.rows(upstream)))
    if as_json:
        typer.echo(json.dumps([{"ref": format_ref(r.kind, r.upstream, r.name), "kind": r.kind,
                                "upstream": r.upstream, "name": r.name, "status": status(r, _config_pin(gov, r)),
                                "approved": _config_pin(gov, r) or r.approved, "pending": r.pending,
                                "approved_by": "config" if _config_pin(gov, r) else "store"} for r in rows],
                              indent=2))
        return
    if not rows:
        typer.echo("no pins (an upstream's definitions are recorded when a gateway first discovers it)")
        return
    table = [("REF", "KIND", "STATUS", "APPROVED", "PENDING")] + [
        (format_ref(r.kind, r.upstream, r.name), r.kind, status(r, _config_pin(gov, r)),
         _short(_config_pin(gov, r) or r.approved) + (" (config)" if _config_pin(gov, r) else ""), _short(r.pending))
        for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(5)]
    for row in table:
        typer.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def _loads(text: str | None) -> dict[str, object] | None:
    if text is None:
        return None
    value = json.loads(text)
    return value if isinstance(value, dict) else None


@pins_app.command()
def diff(
    name: Annotated[str, typer.Argument(help="`upstream.tool` (or `prompt:up.name`, `template:up.uri`)")],
    state: StateOpt = DEFAULT_STATE,
    config: ConfigOpt = None,
) -> None:
    """Show how the pending definition differs from the approved one."""
    gov = _governance(config)
    row = _find(_run(_state(state, config), lambda s: s.rows()), name)
    ref, pin = format_ref(row.kind, row.upstream, row.name), _config_pin(gov, row)
    typer.echo(f"{ref} ({row.kind}): {status(row, pin)}")
    typer.echo(f"  approved {(pin or row.approved) or '-'}{' (config)' if pin else ''}")
    typer.echo(f"  pending  {row.pending or '-'}")
    if row.pending is None:
        typer.echo("nothing pending")
        return
    approved = _loads(row.approved_definition) if not pin or pin == row.approved else None
    if approved is None and (pin or row.approved):
        typer.echo("(the approved definition is not recorded: showing the pending one in full)")
    for line in definition_diff(approved, _loads(row.pending_definition) or {}):
        typer.echo(line)


@pins_app.command()
def approve(
    name: Annotated[str | None, typer.Argument(help="`upstream.tool` (or `prompt:up.name`, `template:up.uri`)")] = None,
    approve_all: Annotated[bool, typer.Option("--all", help="approve everything pending")] = False,
    upstream: Annotated[str | None, typer.Option("--upstream", help="with --all: only this upstream")] = None,
    state: StateOpt = DEFAULT_STATE,
    config: ConfigOpt = None,
) -> None:
    """Approve the pending definition of NAME (or of everything with --all)."""
    if (name is None) == (not approve_all):
        raise fail("name one definition, or pass --all", 2)
    if upstream is not None and not approve_all:
        raise fail("--upstream goes with --all", 2)
    gov = _governance(config)
    url = _state(state, config)
    rows = _run(url, lambda s: s.rows())
    targets = [r for r in _items(rows) if r.pending is not None and upstream in (None, r.upstream)] \
        if approve_all else [_find(rows, name or "")]
    if not approve_all and targets[0].pending is None:
        raise fail(f"{name} has nothing pending")

    async def go(store: PinStore) -> list[PinRow]:
        return [r for r in targets if await store.approve(r.upstream, r.kind, r.name)]

    done = _run(url, go)
    for r in done:
        ref = format_ref(r.kind, r.upstream, r.name)
        typer.echo(f"approved {ref} {r.pending}")
        pin = _config_pin(gov, r)
        if pin is not None and pin != r.pending:
            typer.echo(f"warning: governance.pins pins {ref} to {pin} in the config, which wins: update it to "
                       f"{r.pending}", err=True)
    if approve_all and not done:
        typer.echo("nothing pending")


@pins_app.command()
def revoke(
    name: Annotated[str, typer.Argument(help="`upstream.tool` (or `prompt:up.name`, `template:up.uri`)")],
    state: StateOpt = DEFAULT_STATE,
    config: ConfigOpt = None,
) -> None:
    """Withdraw an approval: the definition is pending again (hidden under `block`)."""
    url = _state(state, config)
    row = _find(_run(url, lambda s: s.rows()), name)
    if not _run(url, lambda s: s.revoke(row.upstream, row.kind, row.name)):
        raise fail(f"{name} is not approved in the state store")
    typer.echo(f"revoked {format_ref(row.kind, row.upstream, row.name)}")
