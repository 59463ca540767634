"""`stile` command line."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from stile import __version__
from stile.cli import audit_prune as _audit_prune  # noqa: F401  (registers `stile audit prune`)
from stile.cli.audit import audit_app
from stile.cli.keys import keys_app
from stile.cli.pins import pins_app
from stile.cli.policy import policy_app
from stile.cli.secrets import secrets_app
from stile.cli.usage import usage_cmd
from stile.config.load import ConfigError, LoadedConfig, load_config, state_url_for

app = typer.Typer(help="Stile: a governed, dual-era MCP gateway.", no_args_is_help=True, add_completion=False)
err = Console(stderr=True)
out = Console()
ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="YAML config file")]


def _print_version(value: bool) -> None:
    if value:
        out.print(__version__)
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[bool, typer.Option("--version", help="print Stile's version and exit",
                                          callback=_print_version, is_eager=True)] = False,
) -> None:
    """Stile: a governed, dual-era MCP gateway."""


def _load(path: Path, *, warn: bool = True) -> LoadedConfig:
    from stile.config.warnings import config_warnings

    try:
        loaded = load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            err.print(f"[red]error[/red] {problem}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from exc
    for warning in config_warnings(loaded.config, str(path)) if warn else ():
        err.print(f"[yellow]warning[/yellow] {warning}", highlight=False, soft_wrap=True)
    return loaded


def _logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)


@app.command()
def serve(
    config: ConfigOpt,
    host: Annotated[str, typer.Option(help="address to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to bind")] = 8080,
    log_level: Annotated[str, typer.Option(help="debug|info|warning|error")] = "info",
    workers: Annotated[str, typer.Option(help="worker processes sharing the port: a number or auto (one per "
                                              "CPU); 1 runs in this process")] = "1",
    worker_fd: Annotated[int | None, typer.Option(hidden=True, help="(set by the supervisor) listening socket")] = None,
    lifeline_fd: Annotated[int | None, typer.Option(hidden=True, help="(set by the supervisor) its lifeline")] = None,
) -> None:
    """Run the gateway."""
    from stile.cli.endpoints import PortBusy, base_url, check_port, endpoint_lines
    from stile.server import run

    loaded = _load(config, warn=worker_fd is None)
    if worker_fd is not None:  # a worker of `--workers N`: the supervisor printed the endpoints and warnings
        from stile.workers.worker import run_worker

        _logging(log_level)
        run_worker(loaded.config, host=host, port=port, fd=worker_fd, lifeline_fd=lifeline_fd, log_level=log_level,
                   state_url=state_url_for(loaded))
        return
    try:
        count = _worker_count(workers)
        check_port(host, port)
    except PortBusy as exc:
        err.print(f"[red]error[/red] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    out.print(f"Stile on {base_url(host, port)}  (config {config}"
              f"{f', {count} workers' if count > 1 else ''})", highlight=False, soft_wrap=True)
    for line in endpoint_lines(loaded.config, base_url(host, port)):
        out.print(line, highlight=False, soft_wrap=True)
    _logging(log_level)
    if count == 1:
        run(loaded.config, host=host, port=port, log_level=log_level, state_url=state_url_for(loaded))
        return
    from stile.workers.supervisor import supervise

    code = supervise(loaded.config, config, host=host, port=port, workers=count, log_level=log_level,
                     state_url=state_url_for(loaded))
    if code:
        raise typer.Exit(code)


def _worker_count(text: str) -> int:
    if text == "1":  # the default: one process, nothing of the supervisor imported
        return 1
    from stile.workers.supervisor import worker_count

    try:
        return worker_count(text)
    except ValueError as exc:
        err.print(f"[red]error[/red] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


@app.command()
def check(
    config: ConfigOpt,
    offline: Annotated[bool, typer.Option(help="validate only; do not contact upstreams")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON: upstreams (status, error), virtual "
                                                        "servers (tools, prompts, resources, problems)")] = False,
) -> None:
    """Validate a config and print each virtual server's resolved surface."""
    from stile.cli.check import console, print_json, print_report, surface

    loaded = _load(config)
    _logging("error")
    data = asyncio.run(surface(loaded.config, offline=offline, state_url=state_url_for(loaded)))
    data["ok"] = not data["problems"]
    if as_json:
        print_json(data)
    else:
        print_report(data, console())
    if data["problems"]:
        raise typer.Exit(1)


@app.command()
def demo(
    port: Annotated[int, typer.Option(help="gateway port")] = 8080,
    config: Annotated[Path | None, typer.Option(help="demo config (default examples/demo.yaml)")] = None,
) -> None:
    """Run the gateway on the embedded default with the bundled example upstreams."""
    from stile.cli.demo import run_demo

    _logging("info")
    run_demo(port, config)


@app.command()
def screen(
    config: ConfigOpt,
    json_out: Annotated[bool, typer.Option("--json", help="one JSON object per definition")] = False,
    hits: Annotated[bool, typer.Option("--hits", help="only definitions the screen flags")] = False,
) -> None:
    """Print the screen's verdict and digest of every tool, prompt and resource (exit 1: unapproved hits)."""
    from stile.cli.screen import review

    loaded = _load(config)
    _logging("error")
    if asyncio.run(review(loaded.config, out, as_json=json_out, only_hits=hits)):
        raise typer.Exit(1)


@app.command()
def version() -> None:
    """Print Stile's version (also: stile --version)."""
    out.print(__version__)


app.add_typer(keys_app, name="keys", help="Create, list and revoke agent API keys.")
app.add_typer(pins_app, name="pins", help="Review and approve pinned tool definitions (rug pulls).")
app.add_typer(policy_app, name="policy", help="Inspect access-control decisions.")
app.add_typer(audit_app, name="audit", help="Inspect the audit trail.")
app.add_typer(secrets_app, name="secrets", help="Store, rotate and re-wrap secrets in the vault.")
app.command("usage")(usage_cmd)


def _table(title: str) -> Table:
    table = Table(title=title, show_lines=False)
    table.add_column("exposed")
    table.add_column("upstream")
    table.add_column("original")
    return table


if __name__ == "__main__":
    app()
