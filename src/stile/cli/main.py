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
from stile.cli.audit import audit_app
from stile.cli.keys import keys_app
from stile.cli.policy import policy_app
from stile.cli.usage import usage_cmd
from stile.config.load import ConfigError, LoadedConfig, load_config, state_url_for

app = typer.Typer(help="Stile: a governed, dual-era MCP gateway.", no_args_is_help=True, add_completion=False)
err = Console(stderr=True)
out = Console()
ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="YAML config file")]
app.add_typer(keys_app, name="keys", help="Create, list and revoke agent API keys.")
app.add_typer(policy_app, name="policy", help="Inspect access-control decisions.")
app.add_typer(audit_app, name="audit", help="Inspect the audit trail.")
app.command("usage")(usage_cmd)


def _load(path: Path) -> LoadedConfig:
    try:
        return load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            err.print(f"[red]error[/red] {problem}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from exc


def _logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)


@app.command()
def version() -> None:
    """Print Stile's version."""
    out.print(__version__)


@app.command()
def serve(
    config: ConfigOpt,
    host: Annotated[str, typer.Option(help="address to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to bind")] = 8080,
    log_level: Annotated[str, typer.Option(help="debug|info|warning|error")] = "info",
) -> None:
    """Run the gateway."""
    from stile.server import run

    loaded = _load(config)
    _logging(log_level)
    run(loaded.config, host=host, port=port, log_level=log_level, state_url=state_url_for(loaded))


@app.command()
def screen(
    config: ConfigOpt,
    json_out: Annotated[bool, typer.Option("--json", help="one JSON object per definition")] = False,
    hits: Annotated[bool, typer.Option("--hits", help="only definitions the screen flags")] = False,
) -> None:
    """Print the screen's verdict and digest of every tool and prompt (exit 1: unapproved hits)."""
    from stile.cli.screen import review

    loaded = _load(config)
    _logging("error")
    if asyncio.run(review(loaded.config, out, as_json=json_out, only_hits=hits)):
        raise typer.Exit(1)


@app.command()
def check(
    config: ConfigOpt,
    offline: Annotated[bool, typer.Option(help="validate only; do not contact upstreams")] = False,
) -> None:
    """Validate a config and print each virtual server's resolved surface."""
    from stile.cli.check import report

    loaded = _load(config)
    _logging("error")
    problems = asyncio.run(report(loaded.config, out, offline=offline))
    if problems:
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


def _table(title: str) -> Table:
    table = Table(title=title, show_lines=False)
    table.add_column("exposed")
    table.add_column("upstream")
    table.add_column("original")
    return table


if __name__ == "__main__":
    app()
