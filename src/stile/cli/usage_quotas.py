"""`stile usage --quotas`: each quota counter of the current windows against its limit (from the state store)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import typer
from rich import box
from rich.table import Table
from rich.text import Text
from sqlalchemy.exc import SQLAlchemyError

from stile.cli.audit import console, dumps, fail, load
from stile.config.load import state_url_for
from stile.policies.quota import QuotaConfig, window_of
from stile.stores.quotas import QuotaStore


async def _rows(url: str, cfg: QuotaConfig) -> dict[tuple[str, str, str], float]:
    store = QuotaStore(url, cfg.table)
    try:
        now = time.time()
        return await store.current({window_of(q.period, now)[0] for q in cfg.quotas})
    finally:
        await store.aclose()


def show_quotas(config: Path | None, as_json: bool) -> None:
    if config is None:
        raise fail("--quotas needs --config (the quotas are defined in policies.quota)")
    loaded = load(config)
    cfg = QuotaConfig.model_validate(loaded.config.policies.get("quota") or {})
    if not cfg.quotas:
        typer.echo("no quotas configured (policies.quota.quotas)")
        return
    try:
        counters = asyncio.run(_rows(state_url_for(loaded), cfg))
    except (SQLAlchemyError, OSError) as exc:
        raise fail(f"cannot read quota counters: {exc}") from exc
    by_name = {q.name: q for q in cfg.quotas}
    rows = sorted(((k, used) for k, used in counters.items() if k[0] in by_name), key=lambda kv: (kv[0], -kv[1]))
    if as_json:
        for (name, subject, window), used in rows:
            q = by_name[name]
            typer.echo(dumps({"quota": name, "key": q.key, "subject": subject, "window": window, "used": used,
                              "limit": q.limit, "unit": q.unit, "fraction": used / q.limit}))
        return
    if not rows:
        typer.echo("no quota consumption in the current windows")
        return
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for title, justify in (("QUOTA", "left"), ("KEY", "left"), ("SUBJECT", "left"), ("WINDOW", "left"),
                           ("USED", "right"), ("LIMIT", "right"), ("UNIT", "left"), ("USED %", "right")):
        table.add_column(title, justify=justify, overflow="fold")  # type: ignore[arg-type]
    for (name, subject, window), used in rows:
        q = by_name[name]
        table.add_row(name, q.key, Text(subject), window, f"{used:g}", f"{q.limit:g}", q.unit,
                      f"{used / q.limit:.0%}")
    console().print(table)
