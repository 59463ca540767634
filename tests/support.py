"""Test support: run real Stile processes (and example upstreams) on loopback, with deadlines."""

from __future__ import annotations

import os
import queue
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
# for child processes started in another directory: this checkout's code, even when PYTHONPATH=src is relative
CHILD_PYTHONPATH = os.pathsep.join([str(REPO / "src"), *filter(None, [os.environ.get("PYTHONPATH")])])


def missing_files(*paths: Path) -> str | None:
    """Why a test tool is unusable (the first of `paths` that is missing), else None."""
    for path in paths:
        if not path.exists():
            return f"{path} is missing: run `bash tools/install-node.sh`"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, proc: subprocess.Popen[bytes], deadline_s: float = 30.0, log: Path | None = None) -> None:
    """Poll `url` until it answers 2xx/5xx (a live server), the process dies, or the deadline passes."""
    import urllib.error
    import urllib.request

    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}: {_tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.05)  # polling a port between attempts; not a test sleep
    raise RuntimeError(f"{url} not up within {deadline_s}s: {_tail(log)}")


def wait_port(port: int, proc: subprocess.Popen[bytes], deadline_s: float = 30.0) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} not listening within {deadline_s}s")


def _tail(log: Path | None) -> str:
    if log is None or not log.exists():
        return ""
    return log.read_text(errors="replace")[-3000:]


def _pump(stream: Any, lines: queue.Queue[str | None]) -> None:
    """Forward a child's output lines into a queue; None marks EOF."""
    try:
        for line in stream:
            lines.put(line)
    finally:
        lines.put(None)


@contextmanager
def ready_process(argv: list[str], what: str, *, deadline_s: float = 30.0, cwd: Path | None = None,
                  env: dict[str, str] | None = None) -> Iterator[int]:
    """Run a server that binds port 0 and prints `READY <port>`; yield the port, stop it afterwards.

    No pick-then-bind race; output (stdout and stderr) is drained by a thread, and quoted if startup fails.
    """
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            text=True, cwd=cwd or REPO, env=env)
    lines: queue.Queue[str | None] = queue.Queue()
    threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True).start()
    try:
        end = time.monotonic() + deadline_s
        seen: list[str] = []
        port: int | None = None
        while port is None and (remaining := end - time.monotonic()) > 0:
            try:
                line = lines.get(timeout=remaining)
            except queue.Empty:
                break
            if line is None:
                raise RuntimeError(f"{what} exited with {proc.wait()}: {''.join(seen)[-3000:]}")
            seen.append(line)
            parts = line.split()
            if len(parts) == 2 and parts[0] == "READY" and parts[1].isdigit():
                port = int(parts[1])
        if port is None:
            raise RuntimeError(f"{what} did not report READY within {deadline_s}s: {''.join(seen)[-3000:]}")
        yield port
    finally:
        stop(proc)


def stop(proc: subprocess.Popen[Any], grace: float = 10.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=grace)


@contextmanager
def stile_server(config: dict[str, Any], *, port: int | None = None, env: dict[str, str] | None = None,
                 ) -> Iterator[str]:
    """Run `python -m stile serve` with `config`; yield its base URL http://127.0.0.1:PORT."""
    port = port or free_port()
    with tempfile.TemporaryDirectory(prefix="stile-test-") as tmp:
        cfg_path = Path(tmp) / "stile.yaml"
        cfg_path.write_text(yaml.safe_dump(config), encoding="utf-8")
        log = Path(tmp) / "stile.log"
        with log.open("wb") as logf:
            proc = subprocess.Popen(
                [sys.executable, "-m", "stile", "serve", "--config", str(cfg_path), "--port", str(port),
                 "--log-level", "info"],
                stdout=logf, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, cwd=REPO,
            )
            try:
                wait_http(f"http://127.0.0.1:{port}/healthz", proc, log=log)
                yield f"http://127.0.0.1:{port}"
            finally:
                stop(proc)


@contextmanager
def listening_process(argv: list[str], port: int, *, env: dict[str, str] | None = None,
                      cwd: Path | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """Run `argv` (a server told to listen on `port`) until it accepts connections; stop it on exit."""
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                            env=env, cwd=cwd)
    try:
        wait_port(port, proc)
        yield proc
    finally:
        stop(proc)


@contextmanager
def notes_upstream() -> Iterator[str]:
    """The bundled HTTP example upstream; yields its MCP URL."""
    port = free_port()
    with listening_process([sys.executable, "-m", "stile.examples_servers.notes_server", "--port", str(port)], port):
        yield f"http://127.0.0.1:{port}/mcp"


def files_upstream_config(root: Path | None = None) -> dict[str, Any]:
    return {"command": [sys.executable, "-m", "stile.examples_servers.files_server"],
            "env": {"FILES_ROOT": str(root or REPO / "examples")}}
