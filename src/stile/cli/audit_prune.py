"""`stile audit prune`: apply `audit.retention` (or limits given here) to the state store once."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from stile.cli.audit import JsonOpt, audit_app, dumps, fail, load
from stile.config.load import LoadedConfig, state_url_for
from stile.config.model import VaultConfig
from stile.config.observe import parse_age, parse_size
from stile.observe.audit_checkpoint import load_keys
from stile.observe.audit_query import QueryError, check_store, describe_error, display_url
from stile.observe.audit_retention import Limits, PruneReport, prune
from stile.observe.audit_store import DB_ERRORS
from stile.vault.keyring import VaultError


def _limits(loaded: LoadedConfig | None, max_age: str | None, max_events: int | None, max_size: str | None,
            export: Path | None, batch: int | None) -> Limits:
    retention = loaded.config.audit.retention if loaded is not None else None
    limits = Limits.of(retention) if retention is not None else Limits()
    try:
        if max_age is not None:
            limits = replace(limits, max_age=parse_age(max_age))
        if max_size is not None:
            limits = replace(limits, max_size=parse_size(max_size))
    except ValueError as exc:
        raise fail(str(exc)) from exc
    if max_events is not None:
        if max_events < 1:
            raise fail("--max-events must be at least 1")
        limits = replace(limits, max_events=max_events)
    if batch is not None:
        if not 10 <= batch <= 100_000:
            raise fail("--batch must be between 10 and 100000")
        limits = replace(limits, batch=batch)
    if export is not None:
        limits = replace(limits, export=export.resolve())
    if limits.max_age is None and limits.max_events is None and limits.max_size is None:
        raise fail("nothing to prune by: set audit.retention in the config or pass --max-age, --max-events or "
                   "--max-size")
    return limits


def _print(report: PruneReport, url: str) -> None:
    if report.cutoff is None:
        typer.echo(f"{display_url(url)}: nothing to prune")
    for name, chain in report.chains.items():
        files = f", exported to {', '.join(chain.files)}" if chain.files else ""
        typer.echo(f"chain {name}: pruned {chain.pruned} events (checkpoint at seq {chain.checkpoint}){files}"
                   if chain.pruned else f"chain {name}: nothing to prune")
    for problem in report.problems:
        typer.echo(problem, err=True)
    typer.echo(f"pruned {report.pruned} events in {report.seconds:.2f} s")


@audit_app.command("prune")
def prune_cmd(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="gateway config (its audit.retention)")] = None,
    state: Annotated[str | None, typer.Option("--state", help="state store URL (instead of --config)")] = None,
    max_age: Annotated[str | None, typer.Option("--max-age", help="prune events older than this (30d, 12h)")] = None,
    max_events: Annotated[int | None, typer.Option("--max-events", help="keep at most this many events")] = None,
    max_size: Annotated[str | None, typer.Option("--max-size", help="keep the audit table under this (5GB)")] = None,
    export: Annotated[Path | None, typer.Option("--export", help="write pruned events here first (.jsonl.gz)")] = None,
    batch: Annotated[int | None, typer.Option("--batch", help="events per transaction (default 5000)")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Prune the oldest store events per retention limits, leaving a signed checkpoint per chain (exit 1 when a
    chain was not pruned because it does not verify)."""
    if (config is None) == (state is None):
        raise fail("pass exactly one of --config or --state")
    loaded = load(config) if config is not None else None
    url = state if state is not None else state_url_for(loaded) if loaded is not None else None
    if loaded is not None and not loaded.config.audit.store:
        raise fail(f"{config}: audit.store is off: retention applies to the state store only")
    if not url:
        raise fail("no state store to prune")
    try:
        check_store(url)
    except QueryError as exc:
        raise fail(str(exc)) from exc
    limits = _limits(loaded, max_age, max_events, max_size, export, batch)
    from stile.assembly import audit_spool_dir

    spool = audit_spool_dir(loaded.config, url) if loaded is not None else None
    vault = loaded.config.vault if loaded is not None else VaultConfig()

    async def go() -> PruneReport:
        keys = await load_keys(url, vault, spool, create=True)
        if keys.signing is None:
            raise VaultError("no key to sign checkpoints with: " + "; ".join(keys.notes)
                             + " (set STILE_MASTER_KEY, or use --config so the spool directory's key file is used)")
        return await prune(url, limits, keys)

    try:
        report = asyncio.run(go())
    except VaultError as exc:
        raise fail(str(exc)) from exc
    except (*DB_ERRORS, ValueError) as exc:
        raise fail(describe_error(url, exc, "prune")) from exc
    if as_json:
        typer.echo(dumps({"cutoff": report.cutoff, "pruned": report.pruned, "seconds": round(report.seconds, 3),
                          "chains": {n: vars(c) for n, c in report.chains.items()}}))
    else:
        _print(report, url)
    if report.problems:
        raise typer.Exit(1)
