"""Relative paths in a config file mean "beside the config file", wherever Stile is started from.

`load_config` applies `resolve_paths` once, so everything downstream sees absolute paths: `state`
(a relative SQLite file: `sqlite:///stile.db`), `audit.jsonl`, `audit.spool_dir` (default
`audit-spool` beside the config when the state store is not a SQLite file) and each stdio upstream's
`cwd`. A config parsed from text (`parse_config`) has no file and keeps its paths as written.
"""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from stile.config.model import GatewayConfig


def _beside(base: Path, value: str) -> str:
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else (base / path).resolve())


def resolve_state_url(url: str, base: Path) -> str:
    """`sqlite:///relative.db` -> `sqlite:////<base>/relative.db`; any other URL unchanged."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return url  # reported where the store is opened, with its own message
    if not parsed.drivername.startswith("sqlite") or not parsed.database or parsed.database == ":memory:":
        return url
    if parsed.database.startswith("file:") or Path(parsed.database).is_absolute():
        return url
    return parsed.set(database=_beside(base, parsed.database)).render_as_string(hide_password=False)


def resolve_paths(cfg: GatewayConfig, base: Path) -> GatewayConfig:
    """`cfg` with every relative path made absolute against `base` (the config file's directory)."""
    base = base.resolve()
    update: dict[str, object] = {}
    if cfg.state:
        update["state"] = resolve_state_url(cfg.state, base)
    audit: dict[str, object] = {}
    if cfg.audit.jsonl:
        audit["jsonl"] = _beside(base, cfg.audit.jsonl)
    if cfg.audit.spool_dir:
        audit["spool_dir"] = _beside(base, cfg.audit.spool_dir)
    elif cfg.state and not str(update["state"]).startswith("sqlite"):
        audit["spool_dir"] = str(base / "audit-spool")  # not beside a SQLite file: beside the config
    retention = cfg.audit.retention
    if retention is not None and retention.export:
        audit["retention"] = retention.model_copy(update={"export": _beside(base, retention.export)})
    if audit:
        update["audit"] = cfg.audit.model_copy(update=audit)
    upstreams = {name: up.model_copy(update={"cwd": _beside(base, up.cwd)}) if up.cwd else up
                 for name, up in cfg.upstreams.items()}
    if any(up.cwd for up in cfg.upstreams.values()):
        update["upstreams"] = upstreams
    return cfg.model_copy(update=update) if update else cfg


def sqlite_state_problem(url: str | None) -> str | None:
    """Why a SQLite state database cannot be opened for writing (checked before serving), or None.

    SQLite creates the file but not its directory; every store (keys, pins, vault, quotas, revocations) would
    otherwise fail on first use, one log line at a time, while the gateway looked healthy."""
    if not url:
        return None
    try:
        parsed = make_url(url)
    except ArgumentError:
        return None
    name = parsed.database
    if not parsed.drivername.startswith("sqlite") or not name or name == ":memory:" or name.startswith("file:"):
        return None
    path = Path(name)
    if path.exists():
        if path.is_dir():
            return f"the state database {path} is a directory"
        if not os.access(path, os.R_OK | os.W_OK):
            return f"the state database {path} is not readable and writable by this user"
        return None
    parent = path.parent
    if not parent.is_dir():
        return f"the state database {path} cannot be created: {parent} does not exist"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"the state database {path} cannot be created: {parent} is not writable by this user"
    return None
