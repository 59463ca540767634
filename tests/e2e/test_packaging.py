"""The built wheel carries the embedded default: installed anywhere, `stile demo` finds its config and upstreams."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

from mcp import Client

from tests.support import REPO, free_port, stop, wait_http


def _wheel(tmp_path: Path) -> Path:
    out = tmp_path / "dist"
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(REPO)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [wheel] = out.glob("stile-*.whl")
    return wheel


async def _use(url: str) -> tuple[set[str], Any]:
    async with Client(url) as c:
        return {t.name for t in (await c.list_tools()).tools}, await c.call_tool("files__list_files", {})


def test_an_installed_wheel_runs_the_demo_from_its_package_data(tmp_path: Path) -> None:
    wheel = _wheel(tmp_path)
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        assert {"stile/examples_servers/demo.yaml", "stile/examples_servers/notes_server.py",
                "stile/examples_servers/files_server.py"} <= names
        assert zf.read("stile/examples_servers/demo.yaml") == (REPO / "examples" / "demo.yaml").read_bytes()

    site, run, state = tmp_path / "site", tmp_path / "run", tmp_path / "state"
    run.mkdir()
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site),
                           str(wheel)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # the installed copy, not this checkout, is what runs (dependencies come from the current environment)
    env = {**os.environ, "PYTHONPATH": str(site), "XDG_STATE_HOME": str(state), "COLUMNS": "200", "NO_COLOR": "1"}
    port = free_port()
    log = tmp_path / "demo.out"
    with log.open("w") as out:
        demo = subprocess.Popen([sys.executable, "-m", "stile", "demo", "--port", str(port)], stdout=out,
                                stderr=subprocess.STDOUT, cwd=run, env=env)
        try:
            wait_http(f"http://127.0.0.1:{port}/healthz", demo, log=log)
            tools, listed = asyncio.run(_use(f"http://127.0.0.1:{port}/mcp/everything"))
        finally:
            stop(demo)
    printed = log.read_text()
    copied = state / "stile" / "demo" / "demo.yaml"
    assert f"config {copied}" in printed, printed
    assert str(site / "stile") not in printed.split("config ", 1)[1].split(")", 1)[0]
    assert {"notes__list_notes", "files__read_file"} <= tools
    assert "demo.yaml" in (listed.structured_content or {})["result"]
    assert (copied.parent / "stile.db").is_file()  # the state goes beside the copy, not into site-packages
    assert not list(site.rglob("*.db")) and not list(run.iterdir())
