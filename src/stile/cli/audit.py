"""`stile audit verify`: check the audit trail's hash chain."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from stile.config.load import ConfigError, load_config
from stile.observe.audit_sinks import verify_jsonl as verify

audit_app = typer.Typer(help="Inspect the audit trail.", no_args_is_help=True, add_completion=False)


@audit_app.command("verify")
def verify_cmd(
    file: Annotated[Path | None, typer.Option("--file", help="audit JSONL file")] = None,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="use the config's audit.jsonl")] = None,
) -> None:
    """Check every line's hash and chain; exit 0 when intact, 1 with the lines that are not, 2 on bad input."""
    if file is None and config is not None:
        try:
            jsonl = load_config(config).config.audit.jsonl
        except ConfigError as exc:
            typer.echo("\n".join(f"error: {p}" for p in exc.problems), err=True)
            raise typer.Exit(2) from exc
        file = Path(jsonl) if jsonl else None
    if file is None or not file.is_file():
        typer.echo(f"error: no audit file to verify ({file or 'pass --file or a config with audit.jsonl'})", err=True)
        raise typer.Exit(2)
    problems = verify(file)
    for problem in problems:
        typer.echo(problem)
    if problems:
        raise typer.Exit(1)
    typer.echo(f"{file}: chain intact")
