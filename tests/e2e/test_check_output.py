"""`stile check` for machines and pipes: `--json`, and full names when stdout is not a terminal."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.support import CHILD_PYTHONPATH, REPO, free_port, notes_upstream

# no COLUMNS: a pipe, as in CI logs or `stile check | grep`
ENV = {k: v for k, v in os.environ.items() if k != "COLUMNS"} | {"NO_COLOR": "1", "PYTHONPATH": CHILD_PYTHONPATH}
LONG = "a_long_exposed_tool_name_that_rich_would_cut_at_80_columns_x"  # 60 characters (64 at most)


@pytest.fixture(scope="module")
def notes() -> Iterator[str]:
    with notes_upstream() as url:
        yield url


def check(tmp_path: Path, config: dict[str, object], *args: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "stile.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return subprocess.run([sys.executable, "-m", "stile", "check", "--config", str(path), *args],
                          capture_output=True, text=True, timeout=60, cwd=REPO, env=ENV)


def test_json_names_upstream_status_and_each_virtual_servers_surface(tmp_path: Path, notes: str) -> None:
    proc = check(tmp_path, {
        "upstreams": {"notes": {"url": notes},
                      "gone": {"url": f"http://127.0.0.1:{free_port()}/mcp", "connect_timeout": 1}},
        "virtual_servers": {"v": {"auth": "none", "upstreams": ["notes", "gone"]},
                            "r": {"auth": "none", "allow_tools": ["notes.get_note", "notes.nope"]}},
    }, "--json")
    assert proc.returncode == 1, proc.stderr
    data = json.loads(proc.stdout)
    assert data["ok"] is False
    assert data["upstreams"]["notes"] == {"status": "ok", "error": None}
    gone = data["upstreams"]["gone"]
    assert gone["status"] == "error" and gone["error"].endswith("/mcp: connection refused"), gone
    v = data["virtual_servers"]["v"]
    assert v["path"] == "/mcp/v" and v["upstreams"] == ["notes", "gone"]
    assert {"exposed": "notes__get_note", "upstream": "notes", "original": "get_note"} in v["tools"]
    assert {"exposed": "notes__summarize", "upstream": "notes", "original": "summarize"} in v["prompts"]
    assert any(r["exposed"] == "notes+notes://index" for r in v["resources"])
    assert [t["exposed"] for t in data["virtual_servers"]["r"]["tools"]] == ["notes__get_note"]
    assert any("notes.nope" in p for p in data["virtual_servers"]["r"]["problems"])
    assert any(p.startswith("upstream gone:") for p in data["problems"])


def test_json_offline(tmp_path: Path) -> None:
    proc = check(tmp_path, {"upstreams": {"a": {"url": "http://127.0.0.1:1/mcp"}},
                            "virtual_servers": {"v": {"auth": "none"}}}, "--offline", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["ok"] is True and data["offline"] is True
    assert data["upstreams"] == {"a": {"status": "not contacted", "error": None}}
    assert data["virtual_servers"]["v"] == {"path": "/mcp/v", "upstreams": ["a"]}


def test_piped_tables_keep_full_names(tmp_path: Path, notes: str) -> None:
    proc = check(tmp_path, {"upstreams": {"notes": {"url": notes}}, "virtual_servers": {
        "a_virtual_server_with_a_long_name_too": {"auth": "none",
                                                  "tools": {"notes.get_note": {"name": LONG}}}}})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert LONG in proc.stdout
    assert "notes+notes://note/{note_id}" in proc.stdout
    assert "…" not in proc.stdout
