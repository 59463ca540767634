"""`stile keys create | list | revoke`: manage API keys in the state store (SQLite file or PostgreSQL)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, TypeVar

import typer

from stile.bus import BUS_ENV, BusUnavailable, open_bus
from stile.bus.rpc import announce
from stile.cli.stores import fail, load_or_fail, run_on_store
from stile.config.load import load_config, state_url_for
from stile.stores.keys import ApiKeyRecord, KeyStore, KeyStoreError, hash_for_config, open_key_store

DEFAULT_STATE = "sqlite:///stile.db"
_DURATION_RE = re.compile(r"(\d+)([dhm])")
_UNITS = {"d": "days", "h": "hours", "m": "minutes"}

T = TypeVar("T")

keys_app = typer.Typer(help="Manage API keys.", no_args_is_help=True, add_completion=False)
StateOpt = Annotated[
    str,
    typer.Option("--state", envvar="STILE_STATE", help="state store URL (sqlite:///path.db or postgresql://...)"),
]
ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="gateway config: use its `state` (default: stile.db beside it)"),
]


def _state(state: str, config: Path | None) -> str:
    """The store: --config's `state` (or stile.db beside the config) wins over --state."""
    if config is None:
        return state
    return state_url_for(load_or_fail(config))


def role_warnings(roles: list[str], config: Path | None) -> list[str]:
    """A key without roles is refused everywhere a credential is required; roles the config does not define grant
    nothing (checked when --config is given; it loaded already)."""
    if not roles:
        return ["it has no roles, so every virtual server that requires a credential refuses it (403): "
                "pass --roles R1,R2"]
    if config is None:
        return []
    defined = load_config(config).config.roles
    return [f"role {role!r} is not defined under `roles:` in {config} (defined: {', '.join(sorted(defined)) or 'none'})"
            for role in roles if role not in defined]


def parse_duration(text: str) -> timedelta:
    """``30d`` / ``12h`` / ``90m`` -> timedelta; ValueError for anything else (including zero)."""
    match = _DURATION_RE.fullmatch(text.strip())
    if match is None or int(match.group(1)) == 0:
        raise ValueError(f"bad duration {text!r}: use a positive whole number followed by d, h or m (30d, 12h, 90m)")
    return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


def _run(state: str, action: Callable[[KeyStore], Awaitable[T]]) -> T:
    return run_on_store(state, lambda: open_key_store(state), action, refused=(KeyStoreError,))


def _when(moment: datetime | None) -> str:
    return "-" if moment is None else moment.strftime("%Y-%m-%d %H:%M:%SZ")


def _status(record: ApiKeyRecord, now: datetime) -> str:
    if record.revoked_at is not None:
        return "revoked"
    if record.expires_at is not None and record.expires_at <= now:
        return "expired"
    return "active"


def _as_json(record: ApiKeyRecord, now: datetime) -> dict[str, object]:
    def iso(moment: datetime | None) -> str | None:
        return None if moment is None else moment.isoformat()

    return {
        "id": record.id,
        "name": record.name,
        "roles": list(record.roles),
        "prefix": record.prefix,
        "created_at": iso(record.created_at),
        "expires_at": iso(record.expires_at),
        "revoked_at": iso(record.revoked_at),
        "status": _status(record, now),
    }


@keys_app.command()
def create(
    name: Annotated[str, typer.Option("--name", help="unique name for the key")],
    roles: Annotated[str, typer.Option("--roles", help="comma-separated roles, e.g. reader,writer")],
    expires: Annotated[str | None, typer.Option("--expires", help="lifetime: 30d, 12h or 90m (default: never)")] = None,
    state: StateOpt = DEFAULT_STATE,
    config: ConfigOpt = None,
) -> None:
    """Create a key. The key is printed once, as the last line; store it now."""
    try:
        lifetime = None if expires is None else parse_duration(expires)
    except ValueError as exc:
        raise fail(str(exc), 2) from exc
    role_list = [role.strip() for role in roles.split(",") if role.strip()]
    expires_at = None if lifetime is None else datetime.now(UTC) + lifetime
    key, record = _run(_state(state, config), lambda store: store.create(name, role_list, expires_at))
    for warning in role_warnings(role_list, config):
        typer.echo(f"warning: key {name!r}: {warning}", err=True)
    typer.echo(f"created key {record.name!r} (id {record.id}, roles {','.join(record.roles) or '-'}, "
               f"expires {_when(record.expires_at)})")
    typer.echo("this is the only time the key is shown:", err=True)
    typer.echo(key)


@keys_app.command("list")
def list_keys(
    state: StateOpt = DEFAULT_STATE,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
    config: ConfigOpt = None,
) -> None:
    """List keys (never their secrets)."""
    records = _run(_state(state, config), lambda store: store.list())
    now = datetime.now(UTC)
    if as_json:
        typer.echo(json.dumps([_as_json(record, now) for record in records], indent=2))
        return
    if not records:
        typer.echo("no keys")
        return
    header = ("NAME", "ID", "PREFIX", "ROLES", "CREATED", "EXPIRES", "STATUS")
    rows = [header] + [
        (r.name, r.id, r.prefix, ",".join(r.roles) or "-", _when(r.created_at), _when(r.expires_at), _status(r, now))
        for r in records
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        typer.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


@keys_app.command()
def revoke(
    name_or_id: Annotated[str, typer.Argument(help="key name or id")],
    state: StateOpt = DEFAULT_STATE,
    config: ConfigOpt = None,
) -> None:
    """Revoke a key by name or id; it stops verifying immediately."""
    if not _run(_state(state, config), lambda store: store.revoke(name_or_id)):
        raise fail(f"no active key named or with id {name_or_id!r}")
    typer.echo(f"revoked {name_or_id}")
    _announce_revocation(config)


def _announce_revocation(config: Path | None) -> None:
    """With a bus (STILE_BUS_URL or the config's `redis:`), tell the running replicas to drop their verified-key
    caches now; otherwise (or if the bus is down) they refuse the key within `auth.key_cache_seconds`."""
    cfg = load_config(config).config if config is not None else None
    if not os.environ.get(BUS_ENV) and (cfg is None or not cfg.redis):
        return
    bus = open_bus(cfg.redis if cfg else None, cfg.redis_prefix if cfg else "stile:",
                   replica=f"cli-{secrets.token_hex(4)}")
    try:
        asyncio.run(announce(bus, "keys.revoked", {}))
    except BusUnavailable as exc:
        typer.echo(f"warning: could not tell the replicas ({exc}); they refuse the key within "
                   "auth.key_cache_seconds", err=True)
        return
    typer.echo("told the running replicas over the bus")


@keys_app.command("hash")
def hash_key(
    key: Annotated[str, typer.Option("--key", prompt=True, hide_input=True, help="the key to hash (prompted)")],
) -> None:
    """Print a salted hash of a key, to declare it in config (`auth.keys[].hash`) instead of the key."""
    try:
        typer.echo(hash_for_config(key.strip()))
    except ValueError as exc:
        raise fail(str(exc), 2) from exc
