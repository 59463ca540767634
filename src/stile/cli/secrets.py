"""`stile secrets set | list | delete | rotate | rewrap | rotate-signing-key | revoke-user | new-master-key`.

Values come from stdin or `--from-file`, never from the command line (argv is visible to every local user
and lands in shell history). One trailing newline is dropped (what `echo` and editors add). Nothing here
ever prints a value.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Annotated, TypeVar

import typer

from stile.cli.keys import DEFAULT_STATE, ConfigOpt, StateOpt
from stile.cli.stores import fail, load_or_fail, run_on_store
from stile.config.load import state_url_for
from stile.config.model import VaultConfig
from stile.vault.assertion import SIGNING_KEY, new_signing_key
from stile.vault.keyring import NEW_ENV, Keyring, VaultError, load_keyring, new_key_text, parse_key, read_key_file
from stile.vault.store import SecretStore
from stile.vault.user_oauth import is_grant_of

T = TypeVar("T")
secrets_app = typer.Typer(help="Manage secrets in the vault.", no_args_is_help=True, add_completion=False)
FromFile = Annotated[Path | None, typer.Option("--from-file", help="read the value from this file (else stdin)")]


def _setup(state: str, config: Path | None) -> tuple[str, VaultConfig]:
    if config is None:
        return state, VaultConfig()
    loaded = load_or_fail(config)
    return state_url_for(loaded), loaded.config.vault


def _run(state: str, config: Path | None, action: Callable[[SecretStore], Awaitable[T]]) -> T:
    url, vault = _setup(state, config)
    return run_on_store(url, lambda: SecretStore(url, load_keyring(vault)), action, refused=(VaultError,))


def _value(from_file: Path | None) -> bytes:
    if from_file is not None:
        try:
            raw = from_file.read_bytes()
        except OSError as exc:
            raise fail(f"cannot read {from_file}: {exc.strerror}", 2) from exc
    else:
        if sys.stdin.isatty():
            typer.echo("reading the value from stdin (end with Ctrl-D)", err=True)
        raw = sys.stdin.buffer.read()
    raw = raw[:-2] if raw.endswith(b"\r\n") else raw[:-1] if raw.endswith(b"\n") else raw
    if not raw:
        raise fail("empty value: pipe it on stdin or use --from-file", 2)
    return raw


@secrets_app.command("set")
def set_secret(name: Annotated[str, typer.Argument(help="secret name")], from_file: FromFile = None,
               state: StateOpt = DEFAULT_STATE, config: ConfigOpt = None) -> None:
    """Store a new secret (value on stdin or --from-file)."""
    if name.startswith("stile."):
        raise fail("names starting with `stile.` are Stile's own", 2)
    value = _value(from_file)
    version = _run(state, config, lambda store: store.set(name, value))
    typer.echo(f"stored {name} (version {version})")


@secrets_app.command()
def rotate(name: Annotated[str, typer.Argument(help="secret name")], from_file: FromFile = None,
           state: StateOpt = DEFAULT_STATE, config: ConfigOpt = None) -> None:
    """Add a new version of a secret (value on stdin or --from-file); gateways use it within seconds."""
    value = _value(from_file)
    version = _run(state, config, lambda store: store.rotate(name, value))
    typer.echo(f"rotated {name} (now version {version})")


@secrets_app.command("rotate-signing-key")
def rotate_signing_key(state: StateOpt = DEFAULT_STATE, config: ConfigOpt = None) -> None:
    """Add a new identity-assertion signing key (the previous ones stay published in the JWKS)."""
    version = _run(state, config, lambda store: store.rotate(SIGNING_KEY, new_signing_key(), create=True))
    typer.echo(f"new signing key (version {version})")


def _when(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%SZ")


@secrets_app.command("list")
def list_secrets(state: StateOpt = DEFAULT_STATE, config: ConfigOpt = None) -> None:
    """Names, versions and dates (never values)."""
    infos = _run(state, config, lambda store: store.list())
    if not infos:
        typer.echo("no secrets")
        return
    rows = [("NAME", "VERSIONS", "LATEST", "CREATED", "UPDATED")] + [
        (i.name, str(i.versions), str(i.latest), _when(i.created_at), _when(i.updated_at)) for i in infos]
    widths = [max(len(r[c]) for r in rows) for c in range(5)]
    for row in rows:
        typer.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


@secrets_app.command()
def delete(name: Annotated[str, typer.Argument(help="secret name")], state: StateOpt = DEFAULT_STATE,
           config: ConfigOpt = None) -> None:
    """Delete every version of a secret."""
    if not _run(state, config, lambda store: store.delete(name)):
        raise fail(f"no secret named {name!r}")
    typer.echo(f"deleted {name}")


@secrets_app.command()
def rewrap(new_key_file: Annotated[Path | None, typer.Option("--new-key-file", help="file with the new master key "
                                                             f"(base64); else ${NEW_ENV}")] = None,
           state: StateOpt = DEFAULT_STATE, config: ConfigOpt = None) -> None:
    """Re-wrap every data key under a new master key. Run gateways with the new key as STILE_MASTER_KEY and
    the old one as STILE_MASTER_KEY_PREVIOUS first: they read both, so nothing fails meanwhile."""
    try:
        if new_key_file is not None:
            new = read_key_file(new_key_file, "--new-key-file")
        elif os.environ.get(NEW_ENV):
            new = parse_key(os.environ[NEW_ENV], NEW_ENV)
        else:
            raise fail(f"give the new master key: --new-key-file FILE or ${NEW_ENV}", 2)
    except VaultError as exc:
        raise fail(str(exc), 2) from exc
    changed = _run(state, config, lambda store: store.rewrap(Keyring(new)))
    typer.echo(f"re-wrapped {changed} data keys under master key {Keyring(new).current_id}")


@secrets_app.command("revoke-user")
def revoke_user(user: Annotated[str, typer.Argument(help="the user (token subject) whose OAuth tokens to delete")],
                upstream: Annotated[str | None, typer.Option("--upstream", help="only this upstream")] = None,
                state: StateOpt = DEFAULT_STATE, config: ConfigOpt = None) -> None:
    """Delete a user's OAuth tokens (identity: user_oauth), for every upstream or one; the user must consent
    again. Running gateways stop using them within vault.cache_seconds."""

    async def action(store: SecretStore) -> list[str]:
        names = [i.name for i in await store.list() if is_grant_of(i.name, user, upstream)]
        return [n for n in names if await store.delete(n)]

    deleted = _run(state, config, action)
    where = f" for upstream {upstream}" if upstream else ""
    if not deleted:
        raise fail(f"no OAuth tokens stored for that user{where}")
    typer.echo(f"revoked {len(deleted)} OAuth grant(s){where}")


@secrets_app.command("new-master-key")
def new_master_key() -> None:
    """Print a fresh random master key (base64 of 32 bytes) for STILE_MASTER_KEY or vault.master_key_file."""
    typer.echo(new_key_text())
