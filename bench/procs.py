"""Starting, pinning, watching and stopping the processes a benchmark run needs.

Every process is started in its own session (process group) and remembered in ``Procs``; ``stop_all``
ends exactly those groups (SIGTERM, then SIGKILL after a grace period), also on Ctrl-C and at exit.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from threading import Thread

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
PEERS_DIR = BENCH / ".peers"
PY = sys.executable
# loopback only: never route through an http_proxy from the environment
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class Unavailable(Exception):
    """A target (gateway, peer) could not be installed or started; the message says why."""


@dataclass(frozen=True)
class Pinning:
    """Which CPU cores each role runs on (empty tuple = not pinned)."""

    server: tuple[int, ...] = ()  # the gateway / peer under test
    client: tuple[int, ...] = ()  # load generator + upstreams (+ py-spy)

    @classmethod
    def auto(cls, mode: str) -> Pinning:
        ncpu = os.cpu_count() or 1
        if mode == "off" or ncpu < 2 or shutil.which("taskset") is None:
            return cls()
        return cls(server=(0,), client=(1,))

    def describe(self) -> str:
        if not self.server:
            return "not pinned"
        return (
            f"gateway/peer under test on core(s) {','.join(map(str, self.server))}; "
            f"upstreams + load generator (+ py-spy) on core(s) {','.join(map(str, self.client))}"
        )


def taskset(cores: tuple[int, ...], argv: list[str]) -> list[str]:
    if not cores:
        return argv
    return ["taskset", "-c", ",".join(map(str, cores)), *argv]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    stderr_tail: deque[str] = field(default_factory=lambda: deque(maxlen=40))
    stdout_lines: deque[str] = field(default_factory=lambda: deque(maxlen=40))

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, n: int = 12) -> str:
        return "\n".join(list(self.stderr_tail)[-n:] or list(self.stdout_lines)[-n:])

    def tree_pids(self) -> list[int]:
        """This process and its descendants (gunicorn/uvicorn workers, taskset's exec'd child)."""
        pids = [self.pid]
        try:
            import psutil
        except ImportError:
            return pids
        with contextlib.suppress(psutil.Error):  # the process may just have exited
            pids += [c.pid for c in psutil.Process(self.pid).children(recursive=True)]
        return pids

    def memory(self) -> dict[str, float]:
        """Memory in MB: the leader's peak (VmHWM) and current (VmRSS) resident set, and the PSS of
        the whole tree (forked workers share pages, so summing their RSS would count them twice)."""
        out = {"peak_rss_mb": 0.0, "rss_mb": 0.0, "tree_pss_mb": 0.0}
        pids = self.tree_pids()
        for pid in pids:
            if pid == self.pid:
                for key, field_name in (("peak_rss_mb", "VmHWM:"), ("rss_mb", "VmRSS:")):
                    out[key] = _proc_kb(f"/proc/{pid}/status", field_name) / 1024
            out["tree_pss_mb"] += _proc_kb(f"/proc/{pid}/smaps_rollup", "Pss:") / 1024
        out = {k: round(v, 1) for k, v in out.items()}
        out["processes"] = len(pids)
        return out


def _proc_kb(path: str, field_name: str) -> float:
    try:
        with open(path, encoding="ascii") as f:
            for line in f:
                if line.startswith(field_name):
                    return float(line.split()[1])
    except OSError:
        pass
    return 0.0


class Procs:
    def __init__(self) -> None:
        self.procs: list[Proc] = []
        atexit.register(self.stop_all)

    def start(self, name: str, argv: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None) -> Proc:
        full_env = dict(os.environ)
        full_env.setdefault("PYTHONPATH", str(REPO))
        if env:
            full_env.update(env)
        popen = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=full_env,
            cwd=str(cwd or REPO),
            start_new_session=True,
        )
        proc = Proc(name, popen)
        self.procs.append(proc)
        Thread(target=_drain, args=(popen.stderr, proc.stderr_tail), daemon=True).start()
        return proc

    def wait_ready_line(self, proc: Proc, timeout: float = 20.0) -> int:
        """Wait for ``READY <port>`` on stdout (bench upstreams); return the port."""
        assert proc.popen.stdout is not None
        deadline = time.monotonic() + timeout
        result: list[int] = []

        def reader() -> None:
            assert proc.popen.stdout is not None
            for raw in proc.popen.stdout:
                line = raw.decode("utf-8", "replace").rstrip()
                proc.stdout_lines.append(line)
                if not result and line.startswith("READY "):
                    result.append(int(line.split()[1]))

        Thread(target=reader, daemon=True).start()
        while time.monotonic() < deadline:
            if result:
                return result[0]
            if not proc.alive():
                raise Unavailable(f"{proc.name} exited with {proc.popen.returncode}: {proc.tail()}")
            time.sleep(0.02)
        raise Unavailable(f"{proc.name} printed no READY line in {timeout:.0f}s: {proc.tail()}")

    def wait_http(self, proc: Proc, url: str, timeout: float = 30.0, ok: tuple[int, ...] = (200,)) -> None:
        """Poll ``url`` until it answers one of ``ok`` (or the process dies / time runs out)."""
        if proc.popen.stdout is not None:
            Thread(target=_drain, args=(proc.popen.stdout, proc.stdout_lines), daemon=True).start()
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if not proc.alive():
                raise Unavailable(f"{proc.name} exited with code {proc.popen.returncode}: {proc.tail()}")
            try:
                with _OPENER.open(url, timeout=2) as resp:
                    if resp.status in ok:
                        return
                    last = f"HTTP {resp.status}"
            except urllib.error.HTTPError as exc:
                if exc.code in ok:
                    return
                last = f"HTTP {exc.code}"
            except (urllib.error.URLError, OSError) as exc:
                last = repr(exc)
            time.sleep(0.1)
        raise Unavailable(f"{proc.name} not healthy at {url} after {timeout:.0f}s ({last}): {proc.tail()}")

    def stop(self, proc: Proc, grace: float = 5.0) -> None:
        if proc.alive():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.popen.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.popen.wait(grace)
        else:
            # the leader is gone; its group may still hold workers
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all(self) -> None:
        for proc in list(reversed(self.procs)):
            self.stop(proc)


def _drain(stream: object, sink: deque[str]) -> None:
    try:
        for raw in stream:  # type: ignore[attr-defined]
            sink.append(raw.decode("utf-8", "replace").rstrip())
    except (OSError, ValueError):
        pass


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with _OPENER.open(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def http_json(
    method: str, url: str, body: object = None, headers: dict[str, str] | None = None, timeout: float = 30.0
) -> tuple[int, object]:
    import json

    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    req.add_header("Accept", "application/json")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with _OPENER.open(req, timeout=timeout) as resp:
            raw = resp.read()
            status = resp.status
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        status = exc.code
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, raw.decode("utf-8", "replace")
