"""Every runnable example config loads, and `stile check --offline` accepts it (new files are picked up)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from stile.config.load import load_config
from tests.support import REPO

EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))


def test_there_are_examples_to_check() -> None:
    assert any(p.name == "demo.yaml" for p in EXAMPLES)


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_loads_and_defines_at_least_one_virtual_server(path: Path) -> None:
    cfg = load_config(path).config
    assert cfg.virtual_servers, f"{path.name} defines no virtual server"
    assert cfg.upstreams, f"{path.name} defines no upstream"


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_stile_check_offline_accepts_example(path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "stile", "check", "--offline", "--config", str(path)],
        capture_output=True, text=True, timeout=60, cwd=REPO, env={**os.environ, "COLUMNS": "200"},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "config OK" in proc.stdout
    for name in load_config(path).config.virtual_servers:
        assert f"{name}:" in proc.stdout


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_examples_block_rug_pulls(path: Path) -> None:
    assert load_config(path).config.governance.pinning == "block"
