"""Upstreams, keys and configs shared by the cross-replica proofs (test_cluster_redis, test_cluster_local)."""

from __future__ import annotations

import os
import secrets
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from stile.cli.main import app
from tests.fixtures import fixture_server
from tests.pg import ENV as PG_ENV
from tests.support import notes_upstream, ready_process

CLUSTER_UPSTREAM = Path(__file__).with_name("cluster_upstream.py")


@dataclass(frozen=True)
class Upstreams:
    fx: str
    cl: str
    notes: str


@contextmanager
def upstreams() -> Iterator[Upstreams]:
    with ExitStack() as stack:
        fx = stack.enter_context(fixture_server())
        port = stack.enter_context(ready_process([sys.executable, "-u", str(CLUSTER_UPSTREAM)], "cluster upstream"))
        notes = stack.enter_context(notes_upstream())
        yield Upstreams(fx, f"http://127.0.0.1:{port}/mcp", notes)


def pg_state() -> str:
    url = os.environ.get(PG_ENV)
    assert url, "tests/conftest.py sets the run's PostgreSQL database"
    return url


def cluster_config(ups: Upstreams) -> dict[str, Any]:
    return {
        "upstreams": {"fx": {"url": ups.fx}, "fxl": {"url": ups.fx, "era": "legacy"}, "cl": {"url": ups.cl},
                      "notes": {"url": ups.notes}},
        "virtual_servers": {"open": {"upstreams": ["fx", "fxl", "cl", "notes"], "auth": "none"},
                            "keyed": {"upstreams": ["fxl"]}},
        "roles": {"caller": {"virtual_servers": ["keyed"], "allow_tools": ["fxl.*"]}},
        "auth": {"key_cache_seconds": 30},  # a revocation must not wait for it: the CLI announces it
    }


def create_key(state: str, prefix: str) -> tuple[str, str]:
    """(name, key) of a new API key with role `caller` in the state store."""
    name = f"{prefix}-{secrets.token_hex(4)}"
    result = CliRunner().invoke(app, ["keys", "create", "--state", state, "--name", name, "--roles", "caller"])
    assert result.exit_code == 0, result.output
    return name, result.output.strip().splitlines()[-1]


def revoke_key(config: Path, name: str, env: dict[str, str]) -> None:
    """`stile keys revoke --config` (the config's state store, and its bus: it tells the replicas)."""
    result = CliRunner().invoke(app, ["keys", "revoke", name, "--config", str(config)], env=env)
    assert result.exit_code == 0, result.output
    assert "told the running replicas" in result.output, result.output
