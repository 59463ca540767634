"""`stile audit verify | search | tail`: check and read the audit trail (state store or JSONL file).

Every command reads one source: `--file PATH` (a JSONL trail), `--state URL` (the state store), or
`--config FILE` (its state store when `audit.store` is on, else its `audit.jsonl`). Bad input (unknown
source, unreadable time, unreachable database) exits 2 with one `error:` line.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

import orjson
import typer
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from stile.config.load import ConfigError, LoadedConfig, load_config, state_url_for
from stile.config.model import VaultConfig
from stile.observe.audit_checkpoint import CheckpointKeys, load_keys
from stile.observe.audit_query import (
    Event,
    Filter,
    QueryError,
    Source,
    audit_source,
    check_outcomes,
    check_store,
    describe_error,
    display_url,
    parse_since,
    search,
    tail,
)
from stile.observe.audit_sinks import read_jsonl, tail_state
from stile.observe.audit_sinks import verify_jsonl as verify
from stile.observe.audit_store import DB_ERRORS, chain_end, chain_summaries, verify_store
from stile.observe.audit_tail import head_problems, pending_ids, pending_problem, read_heads
from stile.observe.audit_writers import every_wal_dir

T = TypeVar("T")
audit_app = typer.Typer(help="Inspect the audit trail.", no_args_is_help=True, add_completion=False)

ConfigOpt = Annotated[Path | None, typer.Option(
    "--config", "-c", help="gateway config: its state store if audit.store, else its audit.jsonl")]
StateOpt = Annotated[str | None, typer.Option("--state", help="state store URL (sqlite:///path.db or postgresql://...)")]
FileOpt = Annotated[Path | None, typer.Option("--file", help="audit JSONL file")]
JsonOpt = Annotated[bool, typer.Option("--json", help="one JSON object per line")]
AgentOpt = Annotated[str | None, typer.Option("--agent", help="agent (API key name, token client id)")]
UserOpt = Annotated[str | None, typer.Option("--user", help="user (token subject)")]
ToolOpt = Annotated[str | None, typer.Option(
    "--tool", help="upstream.tool (as in config) or the exposed name (notes__add); * and ? match any characters")]
UpstreamOpt = Annotated[str | None, typer.Option("--upstream", help="upstream name")]
OutcomeOpt = Annotated[str | None, typer.Option(
    "--outcome", help="ok, is_error, error, denied, unauthenticated (several: comma-separated)")]
ServerOpt = Annotated[str | None, typer.Option("--server", help="virtual server")]
SinceOpt = Annotated[str | None, typer.Option("--since", help="from: 24h, 90m, 7d ago, ISO 8601 or epoch seconds")]
UntilOpt = Annotated[str | None, typer.Option("--until", help="before: same forms as --since")]


def fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def load(config: Path) -> LoadedConfig:
    try:
        return load_config(config)
    except ConfigError as exc:
        raise fail("; ".join(exc.problems)) from exc


def resolve_source(config: Path | None, state: str | None, file: Path | None) -> Source:
    """The one source named by --config, --state or --file (exit 2 unless exactly one usable is given)."""
    given = [name for name, value in (("--config", config), ("--state", state), ("--file", file)) if value]
    if len(given) != 1:
        raise fail("pass exactly one of --config, --state or --file" + (f" (got {', '.join(given)})" if given else ""))
    if file is not None:
        return file
    if state is not None:
        return state
    assert config is not None
    loaded = load(config)
    source = audit_source(loaded.config.audit, state_url_for(loaded))
    if source is not None:
        return source
    raise fail(f"{config}: no audit source (audit.store is off and audit.jsonl is not set)")


def parse_time(option: str, value: str | None) -> float | None:
    try:
        return None if value is None else parse_since(value)
    except ValueError as exc:
        raise fail(f"{option}: {exc}") from exc


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a query; QueryError and bad values become exit 2 with their message."""
    try:
        return asyncio.run(coro)
    except (QueryError, ValueError) as exc:
        raise fail(str(exc)) from exc


def _filter(agent: str | None, user: str | None, tool: str | None, upstream: str | None, outcome: str | None,
            server: str | None, since: str | None, until: str | None, limit: int | None) -> Filter:
    if limit is not None and limit < 1:
        raise fail("--limit/-n must be at least 1")
    try:
        check_outcomes(outcome or "")
    except ValueError as exc:
        raise fail(f"--outcome: {exc}") from exc
    return Filter(agent=agent, user=user, tool=tool, upstream=upstream, outcome=outcome, virtual_server=server,
                  since=parse_time("--since", since), until=parse_time("--until", until), limit=limit)


def when(event: Event) -> str:
    raw = event.get("time")
    try:
        return datetime.fromisoformat(str(raw)).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return str(raw)


def _cell(value: Any) -> Text:
    return Text("-" if value is None else f"{value:g}" if isinstance(value, float) else str(value))


def _principal(event: Event, key: str) -> Any:
    principal = event.get("principal")
    return principal.get(key) if isinstance(principal, dict) else None


def print_events(events: list[Event]) -> None:
    if not events:
        typer.echo("no matching events")
        return
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for title in ("TIME", "AGENT", "USER", "SERVER", "METHOD", "TOOL", "OUTCOME", "MS", "COST"):
        table.add_column(title, overflow="fold", no_wrap=title == "TIME",
                         justify="right" if title in ("MS", "COST") else "left")
    for e in events:
        table.add_row(Text(when(e)), *(_cell(v) for v in (
            _principal(e, "agent"), _principal(e, "user"), e.get("virtual_server"), e.get("method"), e.get("tool"),
            e.get("outcome"), e.get("latency_ms"), e.get("cost"))))
    console().print(table)


def console() -> Console:
    """Rich output on stdout; not to a terminal, wide enough that rows do not wrap (use --json to parse)."""
    out = Console(soft_wrap=False)
    if not out.is_terminal:
        out.width = 200
    return out


def event_line(event: Event) -> str:
    who = f"{_principal(event, 'agent') or '-'}/{_principal(event, 'user') or '-'}"
    tool = f" {event['tool']}" if event.get("tool") else ""
    return (f"{when(event)} {event.get('outcome', '-'):<15} {who} {event.get('virtual_server') or '-'} "
            f"{event.get('method') or '-'}{tool} {_cell(event.get('latency_ms'))}ms")


def dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


@audit_app.command("search")
def search_cmd(agent: AgentOpt = None, user: UserOpt = None, tool: ToolOpt = None, upstream: UpstreamOpt = None,
               outcome: OutcomeOpt = None, server: ServerOpt = None, since: SinceOpt = None, until: UntilOpt = None,
               limit: Annotated[int, typer.Option("--limit", "-n", help="the newest N matching events")] = 100,
               as_json: JsonOpt = False, config: ConfigOpt = None, state: StateOpt = None, file: FileOpt = None,
               ) -> None:
    """Events matching every filter given, oldest first (the newest --limit of them)."""
    source = resolve_source(config, state, file)
    events = run(search(source, _filter(agent, user, tool, upstream, outcome, server, since, until, limit)))
    if as_json:
        for event in events:
            typer.echo(dumps(event))
    else:
        print_events(events)


@audit_app.command("tail")
def tail_cmd(follow: Annotated[bool, typer.Option("--follow", "-f", help="keep printing new events")] = False,
             lines: Annotated[int, typer.Option("-n", "--lines", help="how many recent events first")] = 10,
             agent: AgentOpt = None, user: UserOpt = None, tool: ToolOpt = None, upstream: UpstreamOpt = None,
             outcome: OutcomeOpt = None, server: ServerOpt = None, since: SinceOpt = None,
             as_json: JsonOpt = False, config: ConfigOpt = None, state: StateOpt = None, file: FileOpt = None,
             ) -> None:
    """The last -n events (one line each), then with --follow new ones as they are written (Ctrl-C stops)."""
    source = resolve_source(config, state, file)
    flt = _filter(agent, user, tool, upstream, outcome, server, since, None, lines)

    async def go() -> None:
        async for event in tail(source, flt, follow=follow):
            typer.echo(dumps(event) if as_json else event_line(event))

    try:
        run(go())
    except KeyboardInterrupt:
        return


@audit_app.command("verify")
def verify_cmd(
    file: FileOpt = None,
    config: Annotated[Path | None, typer.Option(
        "--config", "-c", help="verify the config's audit.jsonl and its state store (audit.store)")] = None,
    state: StateOpt = None,
    chain: Annotated[str | None, typer.Option("--chain", help="only this store chain (default: every chain)")] = None,
) -> None:
    """Check every event's hash and chain; exit 0 when intact, 1 with the events that are not, 2 on bad input."""
    files, stores = [file] if file else [], [state] if state else []
    loaded: LoadedConfig | None = None
    if not files and not stores and config is not None:
        loaded = load(config)
        jsonl = Path(loaded.config.audit.jsonl) if loaded.config.audit.jsonl else None
        if loaded.config.audit.store and _store_exists(url := state_url_for(loaded)):
            stores.append(url)
            files = [jsonl] if jsonl is not None and jsonl.is_file() else []
        elif jsonl is not None:
            files.append(jsonl)
    if not files and not stores:
        raise fail(f"no audit trail to verify ({file or 'pass --file, --state or a config with audit.jsonl'})")
    for path in files:
        if not path.is_file():
            raise fail(f"no audit trail to verify ({path})")
    results = [(str(path), verify(path)) for path in files]
    results += [(display_url(url), _verify_store(url, chain, loaded)) for url in stores]
    if loaded is not None:
        results += _tail_checks(loaded, files, stores)
    empty = {str(path) for path in files if not any(True for _ in read_jsonl(path))}
    empty |= {display_url(url) for url in stores if not _store_has_events(url, chain)}
    for where, problems in results:
        if problems:
            typer.echo("\n".join(problems))
        elif where in empty:  # "intact" would suggest something was checked
            typer.echo(f"warning: {where}: no audit events{f' in chain {chain}' if chain else ''} (nothing to verify)",
                       err=True)
        else:
            typer.echo(f"{where}: chain intact")
            if where in {display_url(url) for url in stores}:
                _print_chains(next(url for url in stores if display_url(url) == where), chain)
    if any(problems for _, problems in results):
        raise typer.Exit(1)


def _print_chains(url: str, only: str | None) -> None:
    """One line per store chain (writer): what verify covered."""
    try:
        summaries = asyncio.run(chain_summaries(url))
    except (*DB_ERRORS, ValueError) as exc:
        raise fail(describe_error(url, exc, "verify")) from exc
    for name, count, first, last, pruned in summaries:
        if only is None or name == only:
            before = f", {pruned} pruned before it (signed checkpoint)" if pruned else ""
            typer.echo(f"  chain {name}: seq {first}-{last} ({count} events){before}")


def _tail_checks(loaded: LoadedConfig, files: list[Path], stores: list[str]) -> list[tuple[str, list[str]]]:
    """A gateway's own trail: is its tail there (each writer's heads.json), and is anything it acknowledged
    still in a write-ahead log?"""
    from stile.assembly import audit_spool_dir

    url = state_url_for(loaded)
    spool_dir = audit_spool_dir(loaded.config, url)
    wal_dirs = every_wal_dir(spool_dir)
    heads = [read_heads(d) for d in wal_dirs]
    pending = [i for d in wal_dirs for i in pending_ids(d)]
    where_wal = spool_dir / "wal"
    out: list[tuple[str, list[str]]] = []
    for store in stores:
        store_heads = [h for writer in heads for name, h in writer.items()
                       if name.startswith("store:") and isinstance(h.get("chain"), str)]
        stored: set[str] = set()
        problems: list[str] = []
        chains: list[str | None] = [*sorted({str(h["chain"]) for h in store_heads})] or [None]
        for chain in chains:
            try:
                seq, found = asyncio.run(chain_end(store, chain or "", pending))
            except (*DB_ERRORS, ValueError) as exc:
                raise fail(describe_error(store, exc, "verify")) from exc
            stored |= found
            if chain is None:
                continue
            highest = max((h for h in store_heads if h["chain"] == chain), key=lambda h: int(h.get("seq") or 0))
            problems += head_problems(f"{display_url(store)} chain {chain}", highest, seq)
        out.append((display_url(store), problems
                    + pending_problem(display_url(store), sum(1 for i in pending if i not in stored), where_wal)))
    for path in files:
        ids = {str(e.get("id")) for _, e in read_jsonl(path) if e is not None}
        head = next((writer[f"jsonl:{path}"] for writer in heads if f"jsonl:{path}" in writer), None)
        out.append((str(path), head_problems(str(path), head, tail_state(path)[1])
                    + pending_problem(str(path), sum(1 for i in pending if i not in ids), where_wal)))
    return [(where, problems) for where, problems in out if problems]


def checkpoint_keys(url: str, loaded: LoadedConfig | None) -> CheckpointKeys:
    """The checkpoint keys verify can read: the vault (the config's, else STILE_MASTER_KEY) and, with a config,
    the key file in its spool directory."""
    from stile.assembly import audit_spool_dir

    vault = loaded.config.vault if loaded is not None else VaultConfig()
    spool = audit_spool_dir(loaded.config, state_url_for(loaded)) if loaded is not None else None
    try:
        return asyncio.run(load_keys(url, vault, spool, create=False))
    except (*DB_ERRORS, ValueError) as exc:
        raise fail(describe_error(url, exc, "verify")) from exc


def _store_has_events(url: str, chain: str | None) -> bool:
    """Whether the store's audit table holds any event (of `chain`, when given)."""
    from stile.observe.audit_store import chain_names

    try:
        names = asyncio.run(chain_names(url))
    except (*DB_ERRORS, ValueError) as exc:
        raise fail(describe_error(url, exc, "verify")) from exc
    return any(chain is None or n == chain for n in names)


def _store_exists(url: str) -> bool:
    """False for a SQLite state file that does not exist (nothing to verify); True otherwise."""
    try:
        check_store(url)
    except QueryError:
        return False
    return True


def _verify_store(url: str, chain: str | None, loaded: LoadedConfig | None) -> list[str]:
    try:
        check_store(url)
    except QueryError as exc:
        raise fail(str(exc)) from exc
    keys = checkpoint_keys(url, loaded)
    try:
        return asyncio.run(verify_store(url, chain, keys))
    except (*DB_ERRORS, ValueError) as exc:
        raise fail(describe_error(url, exc, "verify")) from exc
