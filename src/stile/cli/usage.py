"""`stile usage`: calls, errors, latency percentiles and cost units per agent, user, tool or upstream."""

from __future__ import annotations

from typing import Annotated, Literal

import typer
from rich import box
from rich.table import Table
from rich.text import Text

from stile.cli.audit import (
    ConfigOpt,
    FileOpt,
    JsonOpt,
    StateOpt,
    console,
    dumps,
    fail,
    parse_time,
    resolve_source,
    run,
)
from stile.cli.usage_quotas import show_quotas
from stile.observe.audit_query import UsageRow, usage

By = Literal["agent", "user", "tool", "upstream"]


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def print_rows(by: str, rows: list[UsageRow]) -> None:
    if not rows:
        typer.echo("no events in range")
        return
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column(by.upper(), overflow="fold")
    for title in ("CALLS", "ERRORS", "P50 MS", "P95 MS", "COST"):
        table.add_column(title, justify="right")
    for r in rows:
        table.add_row(Text(r.key if r.key is not None else "(none)"), str(r.calls), str(r.errors), _ms(r.p50_ms),
                      _ms(r.p95_ms), f"{r.cost:g}")
    console().print(table)


def usage_cmd(
    by: Annotated[By, typer.Option("--by", help="group by agent, user, tool or upstream")] = "tool",
    since: Annotated[str, typer.Option("--since", help="from: 24h, 90m, 7d ago, ISO 8601 or epoch seconds")] = "24h",
    until: Annotated[str | None, typer.Option("--until", help="before: same forms as --since (default: now)")] = None,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    state: StateOpt = None,
    file: FileOpt = None,
    quotas: Annotated[bool, typer.Option("--quotas", help="quota counters of the current day/month against "
                                         "their limits (policies.quota; needs --config)")] = False,
) -> None:
    """Usage from the audit trail: calls, errors (outcome other than ok), p50/p95 latency and cost units."""
    if quotas:
        show_quotas(config, as_json)
        return
    source = resolve_source(config, state, file)
    start, end = parse_time("--since", since), parse_time("--until", until)
    if start is not None and end is not None and end <= start:
        raise fail("--until must be later than --since")
    rows = run(usage(source, by, start, end))
    if as_json:
        for row in rows:
            typer.echo(dumps({"by": by, **row.as_dict()}))
    else:
        print_rows(by, rows)
