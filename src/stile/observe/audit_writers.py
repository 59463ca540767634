"""Who writes the audit trail: one writer id per gateway process, one store chain per writer by default.

Several writers (`stile serve --workers N`, replicas behind a load balancer) share one audit table. Each
seals its own chain, so they never compete for `(chain, seq)`; `verify`, `search` and `usage` read every
chain together. The writer id is `STILE_REPLICA_ID` (the worker supervisor sets a distinct one per worker;
set one per replica), else the host name: a restart on the same host continues the same chain. Two
processes that end up with the same id still work (the store sink re-seals on a conflict), only slower.
`audit.chain` set in the config overrides the chain name (writers then share it deliberately).

Each writer also keeps its own local state under the spool directory: its write-ahead log and `heads.json`
in `wal/<writer>/`, its spool files named `<sink>@<writer>.spool`. A process starting there also replays
what dead processes of *other* writer ids left (a worker that is not coming back; segments from before
this layout, directly in `wal/`), so nothing acknowledged waits forever.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
from collections.abc import Mapping
from pathlib import Path

REPLICA_ENV = "STILE_REPLICA_ID"
_VALID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


class WriterIdError(ValueError):
    """`STILE_REPLICA_ID` is not usable as a writer id (message fit to show an operator)."""


def writer_id(env: Mapping[str, str] | None = None, hostname: str | None = None) -> str:
    """This process's writer id: `STILE_REPLICA_ID` (validated), else the host name made safe, else `default`."""
    env = os.environ if env is None else env
    given = env.get(REPLICA_ENV)
    if given is not None and given != "":
        if not _VALID.fullmatch(given):
            raise WriterIdError(f"{REPLICA_ENV}={given[:80]!r} is not a valid writer id: 1 to 64 of A-Z a-z 0-9 _ . -, "
                                "starting with a letter or digit")
        return given
    host = _UNSAFE.sub("_", hostname if hostname is not None else socket.gethostname()).lstrip("_.-")[:64]
    return host or "default"


def chain_for(configured: str | None, writer: str) -> str:
    """The store chain a writer seals: `audit.chain` when configured (shared on purpose), else its own id."""
    return configured or writer


def wal_dir(spool_dir: Path, writer: str) -> Path:
    return spool_dir / "wal" / writer


def other_wal_dirs(spool_dir: Path, writer: str) -> list[Path]:
    """Where dead processes of other writer ids (and of the layout before writer ids) may have left segments."""
    root = spool_dir / "wal"
    out = [root]
    with contextlib.suppress(OSError):
        out += sorted(p for p in root.iterdir() if p.is_dir() and p.name != writer)
    return out


def every_wal_dir(spool_dir: Path) -> list[Path]:
    """`wal/` itself (the layout before writer ids) and every writer's directory under it."""
    root = spool_dir / "wal"
    out = [root] if root.is_dir() else []
    with contextlib.suppress(OSError):
        out += sorted(p for p in root.iterdir() if p.is_dir())
    return out


def spool_path(spool_dir: Path, sink_name: str, writer: str) -> Path:
    """`<sink>@<writer>.spool`; a spool left by the layout before writer ids (`<sink>.spool`) is adopted."""
    safe = _UNSAFE.sub("_", sink_name)
    path = spool_dir / f"{safe}@{writer}.spool"
    legacy = spool_dir / f"{safe}.spool"
    if legacy.exists() and not path.exists():
        with contextlib.suppress(OSError):  # FileNotFoundError: another process adopted it first
            done = legacy.with_name(legacy.name + ".done")
            if done.exists():
                os.rename(done, path.with_name(path.name + ".done"))
            os.rename(legacy, path)
    return path
