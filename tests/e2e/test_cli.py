"""The `stile` command line, run as a user would: check (online and on a broken file) and demo."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from mcp import Client
from mcp.types import TextContent

from stile import __version__
from tests.support import CHILD_PYTHONPATH, REPO, files_upstream_config, free_port, notes_upstream, stop, wait_http

ENV = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "PYTHONUNBUFFERED": "1", "PYTHONPATH": CHILD_PYTHONPATH}


def stile(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "stile", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=REPO, env=ENV)


def write_config(tmp_path: Path, config: dict[str, Any]) -> Path:
    path = tmp_path / "stile.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def rows(output: str) -> set[tuple[str, ...]]:
    """Table rows of `stile check` as tuples of cell texts."""
    found = set()
    for line in output.splitlines():
        cells = [c.strip() for c in re.split(r"[│|]", line) if c.strip()]
        if len(cells) == 4 and cells[0] in ("tool", "prompt", "resource", "template"):
            found.add(tuple(cells))
    return found


@pytest.fixture(scope="module")
def notes() -> Iterator[str]:
    with notes_upstream() as url:
        yield url


def test_version_prints_the_package_version() -> None:
    proc = stile("version")
    assert proc.returncode == 0
    assert proc.stdout.strip() == __version__


def test_check_prints_the_resolved_surface_of_every_virtual_server(tmp_path: Path, notes: str) -> None:
    path = write_config(tmp_path, {
        "upstreams": {"notes": {"url": notes}, "files": files_upstream_config()},
        "virtual_servers": {
            "everything": {"upstreams": ["notes", "files"], "auth": "none"},
            "reader": {"auth": "none", "allow_tools": ["notes.list_notes", "files.read_*"],
                       "deny_tools": ["files.read_env"],
                       "tools": {"notes.list_notes": {"name": "notes", "description": "All notes"}}},
        },
    })
    proc = stile("check", "--config", str(path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "virtual server everything" in proc.stdout and "/mcp/everything" in proc.stdout
    assert "virtual server reader" in proc.stdout
    table = rows(proc.stdout)
    assert {
        ("tool", "notes__get_note", "notes", "get_note"),
        ("tool", "files__read_env", "files", "read_env"),
        ("tool", "notes", "notes", "list_notes"),
        ("tool", "files__read_file", "files", "read_file"),
        ("prompt", "notes__summarize", "notes", "summarize"),
        ("resource", "notes+notes://index", "notes", "notes://index"),
        ("resource", "files+file:///readme", "files", "file:///readme"),
        ("template", "notes+notes://note/{note_id}", "notes", "notes://note/{note_id}"),
    } <= table
    reader_tools = {r[1] for r in table if r[0] == "tool" and r[1] in ("notes", "files__read_file")}
    assert reader_tools == {"notes", "files__read_file"}
    assert proc.stdout.rstrip().endswith("config OK")


def test_check_reports_a_collision_naming_both_sources_and_exits_1(tmp_path: Path, notes: str) -> None:
    path = write_config(tmp_path, {
        "upstreams": {"notes": {"url": notes}},
        "virtual_servers": {"v": {"auth": "none", "tools": {"notes.get_note": {"name": "notes__list_notes"}}}},
    })
    proc = stile("check", "--config", str(path))
    assert proc.returncode == 1
    assert ("virtual server v: tool name 'notes__list_notes' collides: notes.list_notes and notes.get_note; "
            "keeping notes.list_notes") in proc.stdout


def test_check_reports_an_unreachable_upstream_and_exits_1(tmp_path: Path, notes: str) -> None:
    gone = f"http://127.0.0.1:{free_port()}/mcp"
    path = write_config(tmp_path, {
        "upstreams": {"notes": {"url": notes}, "gone": {"url": gone, "connect_timeout": 1}},
        "virtual_servers": {"v": {"auth": "none"}},
    })
    proc = stile("check", "--config", str(path))
    assert proc.returncode == 1
    assert f"problem upstream gone: {gone}: connection refused" in " ".join(proc.stdout.split())
    assert ("tool", "notes__get_note", "notes", "get_note") in rows(proc.stdout)


def test_check_on_a_bad_config_exits_2_naming_file_and_key_path(tmp_path: Path) -> None:
    path = write_config(tmp_path, {
        "upstreams": {"github": {"url": "http://127.0.0.1:1/mcp"}},
        "virtual_servers": {"support": {"allow_tools": ["github.list_issues", "crm.update_ticket"]}},
    })
    proc = stile("check", "--config", str(path))
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert (f"error {path}: virtual_servers.support.allow_tools[1]: unknown upstream 'crm' in "
            "'crm.update_ticket'") in proc.stderr
    assert "Traceback" not in proc.stderr


def test_check_on_invalid_yaml_exits_2_with_the_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("upstreams:\n  a: {url: 'http://x/mcp'\nvirtual_servers: {}\n", encoding="utf-8")
    proc = stile("check", "--offline", "--config", str(path))
    assert proc.returncode == 2
    assert f"{path}: line 3 column 1: invalid YAML" in proc.stderr


def test_serve_on_a_bad_config_exits_2_without_listening(tmp_path: Path) -> None:
    path = write_config(tmp_path, {"upstreams": {"a": {"url": "http://x/mcp", "command": ["x"]}}})
    proc = stile("serve", "--config", str(path), "--port", str(free_port()))
    assert proc.returncode == 2
    assert f"{path}: upstreams.a:" in proc.stderr


@dataclass(frozen=True)
class Demo:
    base: str
    log: Path
    pid: int
    config: Path


def children(pid: int) -> dict[int, str]:
    """Direct child processes of `pid` (Linux /proc), with their command lines."""
    out: dict[int, str] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            cmdline = Path(f"/proc/{child}/cmdline")
            if cmdline.exists():
                out[int(child)] = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[Demo]:
    """`stile demo --port P --config <a copy of examples/demo.yaml>`, stopped after the test.

    A copy, so its state database (beside it) is this test's own: concurrent runs do not see each other's events.
    """
    port = free_port()
    log = tmp_path / "demo.out"
    config = tmp_path / "demo" / "demo.yaml"
    config.parent.mkdir()
    shutil.copy(REPO / "examples" / "demo.yaml", config)
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "stile", "demo", "--port", str(port), "--config", str(config)],
                                stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path, env=ENV)
        try:
            wait_http(f"http://127.0.0.1:{port}/healthz", proc, log=log)
            yield Demo(f"http://127.0.0.1:{port}", log, proc.pid, config)
        finally:
            stop(proc)


async def test_demo_starts_prints_its_endpoints_and_serves_a_client(demo: Demo) -> None:
    base = demo.base
    started = datetime.now(UTC).isoformat()
    async with Client(f"{base}/mcp/everything") as c:
        everything = {t.name for t in (await c.list_tools()).tools}
        listed = await c.call_tool("files__list_files", {})
    async with Client(f"{base}/mcp/reader", mode="legacy") as c:
        reader = {t.name for t in (await c.list_tools()).tools}
        notes = await c.call_tool("notes", {})
    printed = demo.log.read_text()
    assert f"{base}/mcp/everything" in printed
    assert f"{base}/mcp/reader" in printed
    assert "from mcp import Client" in printed
    assert "print([t.name for t in (await c.list_tools()).tools])" in printed  # the snippet survives rich markup
    assert {"notes__list_notes", "notes__count_slowly", "files__read_file", "files__read_env"} <= everything
    assert reader == {"notes", "notes__get_note", "files__read_file", "files__list_files"}
    assert "demo.yaml" in (listed.structured_content or {})["result"]
    assert isinstance(notes.content[0], TextContent) and "welcome" in notes.content[0].text
    assert "stile audit tail -f --config" in printed
    # the hint works as typed in this shell (`stile` need not be on PATH: then it names this installation's)
    hint = printed.split("audit trail: ", 1)[1].splitlines()[0].strip()
    typed = hint.replace(" -f ", " ") + " -n 1"
    ran = await asyncio.to_thread(subprocess.run, ["bash", "-c", typed], capture_output=True, text=True, timeout=60,
                                  env=ENV, cwd=demo.log.parent)
    assert ran.returncode == 0, f"{typed}: {ran.stderr}"
    # the demo audits to SQLite beside its config; the CLI reads that trail back
    search = [sys.executable, "-m", "stile", "audit", "search", "--config", str(demo.config),
              "--since", started, "--tool", "files__list_files", "--json"]
    deadline = time.monotonic() + 20
    while True:  # the audit writer flushes in the background: re-query until the event is there
        proc = await asyncio.to_thread(subprocess.run, search, capture_output=True, text=True, timeout=60, env=ENV)
        assert proc.returncode == 0, proc.stderr
        found = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
        if found or time.monotonic() > deadline:
            break
    assert [(e["tool"], e["outcome"], e["upstream"]) for e in found] == [("files__list_files", "ok", "files")]


def test_stopping_the_demo_with_sigterm_stops_the_upstreams_it_started(tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "stile", "demo", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path, env=ENV)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", proc)
        spawned = children(proc.pid)
        assert any("notes_server" in cmd for cmd in spawned.values()), spawned
        assert any("files_server" in cmd for cmd in spawned.values()), spawned
    finally:
        stop(proc)  # SIGTERM, as `kill`, systemd and docker stop send
    leaked = {pid: cmd for pid, cmd in spawned.items() if alive(pid)}
    for pid in leaked:  # clean up before failing, so a regression does not leak into the next run
        os.kill(pid, 15)
    assert not leaked, f"processes left running after the demo exited: {leaked}"
