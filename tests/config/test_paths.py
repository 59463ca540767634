"""Relative paths in a config resolve beside the config file, whatever the working directory is."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from stile.assembly import audit_spool_dir
from stile.config.load import load_config, state_url_for
from tests.support import CHILD_PYTHONPATH

ENV = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "PYTHONPATH": CHILD_PYTHONPATH}  # run from elsewhere


def _config(tmp_path: Path, text: str) -> Path:
    conf = tmp_path / "conf"
    conf.mkdir()
    path = conf / "stile.yaml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    other = tmp_path / "elsewhere"
    other.mkdir()
    monkeypatch.chdir(other)
    return other


def test_every_relative_path_resolves_beside_the_config(tmp_path: Path, elsewhere: Path) -> None:
    path = _config(tmp_path, """
state: sqlite:///data/stile.db
audit: {jsonl: logs/audit.jsonl, spool_dir: spool}
upstreams:
  files: {command: [python, -m, x], cwd: srv}
  web: {url: "http://127.0.0.1:1/mcp"}
virtual_servers: {all: {auth: none}}
""")
    conf = path.parent.resolve()
    loaded = load_config(path)
    cfg = loaded.config
    assert state_url_for(loaded) == f"sqlite:///{conf / 'data' / 'stile.db'}"
    assert cfg.audit.jsonl == str(conf / "logs" / "audit.jsonl")
    assert cfg.audit.spool_dir == str(conf / "spool")
    assert audit_spool_dir(cfg, state_url_for(loaded)) == conf / "spool"
    assert cfg.upstreams["files"].cwd == str(conf / "srv")
    assert cfg.upstreams["web"].cwd is None


def test_absolute_paths_and_other_stores_are_kept(tmp_path: Path, elsewhere: Path) -> None:
    path = _config(tmp_path, f"""
state: postgresql://u@db.example/stile
audit: {{jsonl: {tmp_path / 'abs.jsonl'}}}
upstreams: {{files: {{command: [python], cwd: /srv}}}}
virtual_servers: {{all: {{auth: none}}}}
""")
    loaded = load_config(path)
    assert loaded.config.state == "postgresql://u@db.example/stile"
    assert loaded.config.audit.jsonl == str(tmp_path / "abs.jsonl")
    assert loaded.config.upstreams["files"].cwd == "/srv"
    # not beside a SQLite file: the spool (and its write-ahead log) goes beside the config, not into the cwd
    assert audit_spool_dir(loaded.config, state_url_for(loaded)) == path.parent.resolve() / "audit-spool"


def test_keys_cli_uses_the_database_beside_the_config_from_another_directory(tmp_path: Path) -> None:
    """The issue: `stile keys list --config /abs/identity.yaml` run elsewhere printed `no keys` (a new empty db)."""
    path = _config(tmp_path, "state: sqlite:///stile.db\nupstreams: {a: {url: 'http://127.0.0.1:1/mcp'}}\n"
                             "virtual_servers: {v: {auth: none}}\n")
    other = tmp_path / "elsewhere"
    other.mkdir()

    def stile(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "stile", *args], capture_output=True, text=True, timeout=60,
                              cwd=other, env=ENV)

    made = stile("keys", "create", "--config", str(path), "--name", "bot", "--roles", "reader")
    assert made.returncode == 0, made.stderr
    assert (path.parent / "stile.db").is_file()
    assert not (other / "stile.db").exists()
    listed = stile("keys", "list", "--config", str(path))
    assert listed.returncode == 0, listed.stderr
    assert "bot" in listed.stdout
    assert not (other / "stile.db").exists()
