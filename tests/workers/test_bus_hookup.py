"""The supervisor's one hook for the local bus (`start_bus`): real when `stile.bus.local` exists, else skipped."""

from __future__ import annotations

import importlib.util
import stat
from pathlib import Path

from stile.workers.supervisor import BUS_ENV, start_bus


async def test_start_bus_advertises_a_private_unix_socket_or_runs_without(tmp_path: Path) -> None:
    env, close = await start_bus(tmp_path)
    if importlib.util.find_spec("stile.bus") is None:  # the bus helper's package is not merged yet
        assert (env, close) == ({}, None)
        return
    assert close is not None
    try:
        path = tmp_path / "bus.sock"
        assert env == {BUS_ENV: f"unix://{path}"}
        assert stat.S_ISSOCK(path.stat().st_mode) and stat.S_IMODE(path.stat().st_mode) == 0o600
    finally:
        await close()
    assert not (tmp_path / "bus.sock").exists()
