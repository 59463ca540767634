"""`stile serve` / `stile demo` tell the user where they listen, and a busy port before anything else."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from tests.support import CHILD_PYTHONPATH, REPO, free_port, stop, wait_http

ENV = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "PYTHONUNBUFFERED": "1", "PYTHONPATH": CHILD_PYTHONPATH}
CONFIG = """
upstreams: {notes: {url: "http://127.0.0.1:1/mcp", connect_timeout: 1}}
virtual_servers: {alpha: {auth: none}, beta: {auth: none}}
"""


def _busy() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


def test_serve_prints_one_endpoint_line_per_virtual_server(tmp_path: Path) -> None:
    path = tmp_path / "stile.yaml"
    path.write_text(CONFIG, encoding="utf-8")
    port = free_port()
    log = tmp_path / "serve.out"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "stile", "serve", "--config", str(path), "--port", str(port)],
                                stdout=out, stderr=subprocess.DEVNULL, cwd=tmp_path, env=ENV)
        try:
            wait_http(f"http://127.0.0.1:{port}/healthz", proc, log=log)
        finally:
            stop(proc)
    printed = log.read_text()
    base = f"http://127.0.0.1:{port}"
    assert f"Stile on {base}" in printed
    for name in ("alpha", "beta"):
        assert f"virtual server {name}: {base}/mcp/{name}   (legacy SSE: {base}/sse/{name})" in printed


def test_serve_on_a_busy_port_says_so_first_and_exits(tmp_path: Path) -> None:
    path = tmp_path / "stile.yaml"
    path.write_text(CONFIG, encoding="utf-8")
    with _busy() as sock:
        port = sock.getsockname()[1]
        proc = subprocess.run([sys.executable, "-m", "stile", "serve", "--config", str(path), "--port", str(port)],
                              capture_output=True, text=True, timeout=60, cwd=tmp_path, env=ENV)
    assert proc.returncode == 1
    assert f"port {port} on 127.0.0.1 is already in use" in proc.stderr
    assert "--port N" in proc.stderr
    assert "Traceback" not in proc.stderr and "virtual server" not in proc.stdout


def test_demo_on_a_busy_port_says_so_before_its_banner(tmp_path: Path) -> None:
    with _busy() as sock:
        port = sock.getsockname()[1]
        proc = subprocess.run([sys.executable, "-m", "stile", "demo", "--port", str(port)], capture_output=True,
                              text=True, timeout=60, cwd=REPO, env=ENV)
    assert proc.returncode == 1
    assert f"port {port} on 127.0.0.1 is already in use" in proc.stderr
    assert "make demo PORT=N" in proc.stderr
    assert "Stile demo" not in proc.stdout and "Traceback" not in proc.stderr


def test_serve_with_a_state_database_it_cannot_create_exits_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "dir"
    for store in ("true", "false"):  # with the audit store off nothing else would have noticed
        path = tmp_path / f"stile-{store}.yaml"
        path.write_text(CONFIG + f"state: sqlite:///{missing}/state.db\naudit: {{store: {store}}}\n", encoding="utf-8")
        proc = subprocess.run([sys.executable, "-m", "stile", "serve", "--config", str(path), "--port",
                               str(free_port())], capture_output=True, text=True, timeout=60, cwd=tmp_path, env=ENV)
        assert proc.returncode == 1, proc.stderr
        assert f"the state database {missing}/state.db cannot be created: {missing} does not exist" in proc.stderr
        assert "Traceback" not in proc.stderr


def test_sqlite_state_problems_are_named() -> None:
    from stile.config.paths import sqlite_state_problem

    assert sqlite_state_problem(None) is None
    assert sqlite_state_problem("postgresql://u@h/db") is None
    assert sqlite_state_problem("sqlite:///:memory:") is None
    assert sqlite_state_problem("sqlite:////") == "the state database / is a directory"
