"""The system under a front-door fuzz run: a real Stile process over a real SDK upstream, raw sockets, the oracle.

`FuzzTarget` starts the notes example server (official MCP SDK, Streamable HTTP) and `python -m stile serve`
with its own temporary config: an anonymous virtual server `open`, an API-key virtual server `keyed` and the
admin API (the key holds the admin role). The gateway's stdout+stderr go to a log file the oracle reads.

`exchange()` sends raw request bytes over a fresh TCP connection and reads one answer; `Oracle` checks the
rules every case must keep: no HTTP 5xx, no JSON-RPC -32603, no traceback or "unhandled" line in the log,
`/healthz` and one real `tools/call` still working, RSS bounded.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import psutil
import yaml

REPO = Path(__file__).resolve().parent.parent
MODERN = "2026-07-28"
META = {"io.modelcontextprotocol/protocolVersion": MODERN, "io.modelcontextprotocol/clientCapabilities": {}}
MAX_BODY = 64 * 1024
EXC_LINE = re.compile(r"[\w.]+(Error|Exception|Exit|Interrupt)\b")
BAD_LOG = re.compile(r"Traceback|unhandled|Exception in ASGI|Task exception was never retrieved", re.IGNORECASE)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[bytes], what: str, deadline_s: float = 30.0) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)  # polling a port between attempts
    raise RuntimeError(f"{what} not listening on {port} within {deadline_s}s")


@dataclass
class Answer:
    """One raw HTTP answer (status 0: the server closed without answering)."""

    status: int
    head: bytes
    body: bytes

    def jsonrpc_codes(self) -> list[int]:
        """Every JSON-RPC error code in the body (JSON, a batch, or SSE `data:` lines)."""
        texts = [self.body]
        if b"text/event-stream" in self.head.lower():
            texts = [line[5:] for line in self.body.split(b"\n") if line.startswith(b"data:")]
        codes: list[int] = []
        for text in texts:
            try:
                doc = json.loads(text)
            except ValueError:
                continue
            for item in doc if isinstance(doc, list) else [doc]:
                err = item.get("error") if isinstance(item, dict) else None
                if isinstance(err, dict) and isinstance(err.get("code"), int):
                    codes.append(err["code"])
        return codes

    def header(self, name: str) -> str | None:
        for line in self.head.split(b"\r\n")[1:]:
            key, _, value = line.partition(b":")
            if key.strip().lower() == name.lower().encode():
                return value.strip().decode("latin-1")
        return None


def _complete(buf: bytes) -> bool:
    head, sep, body = buf.partition(b"\r\n\r\n")
    if not sep:
        return False
    lower = head.lower()
    if b"text/event-stream" in lower:
        return b"\n\n" in body or b"\r\n\r\n" in body  # the first event is enough
    match = re.search(rb"\r\ncontent-length:\s*(\d+)", lower)
    if match is not None:
        return len(body) >= int(match.group(1))
    if b"transfer-encoding: chunked" in lower:
        return body.endswith(b"0\r\n\r\n")
    return False


def exchange(port: int, data: bytes, *, timeout: float = 3.0, hang_up: bool = False) -> Answer:
    """Send `data` on a new connection and read one answer; `hang_up` closes right after sending."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
        except OSError:
            return Answer(0, b"", b"")
        if hang_up:
            return Answer(0, b"", b"")
        buf = b""
        end = time.monotonic() + timeout
        while not _complete(buf) and time.monotonic() < end:
            try:
                chunk = sock.recv(65536)
            except (TimeoutError, OSError):
                break
            if not chunk:
                break
            buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    match = re.match(rb"HTTP/1\.[01] (\d{3})", head)
    return Answer(int(match.group(1)) if match else 0, head, body)


def request(method: str, path: str, headers: dict[str, str] | list[tuple[str, str]], body: bytes = b"",
            *, length: bool = True) -> bytes:
    """HTTP/1.1 request bytes (headers kept as given, Host added if missing, Content-Length unless `length=False`)."""
    items = list(headers.items()) if isinstance(headers, dict) else list(headers)
    if not any(k.lower() == "host" for k, _ in items):
        items.insert(0, ("Host", "127.0.0.1"))
    if length and not any(k.lower() == "content-length" for k, _ in items):
        items.append(("Content-Length", str(len(body))))
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in items) + "\r\n"
    return head.encode("latin-1") + body


def modern_call(name: str, arguments: dict[str, Any], key: str | None = None, vs: str = "open") -> bytes:
    headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream",
               "MCP-Protocol-Version": MODERN, "Mcp-Method": "tools/call", "Mcp-Name": name,
               "Connection": "close"}
    if key is not None:
        headers["X-API-Key"] = key
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": name, "arguments": arguments, "_meta": META}}
    return request("POST", f"/mcp/{vs}", headers, json.dumps(body).encode())


@dataclass
class FuzzTarget:
    """A running notes upstream + Stile gateway (use as a context manager)."""

    key: str = field(default_factory=lambda: f"stile_fuzz_{secrets.token_urlsafe(24)}")
    src: Path = REPO / "src"  # the Stile source tree to run (another checkout's src/ to fuzz that build)
    port: int = 0
    log_path: Path = Path()
    _procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _tmp: tempfile.TemporaryDirectory[str] | None = None
    _log_offset: int = 0

    def config(self, upstream_url: str, tmp: Path) -> dict[str, Any]:
        from stile.stores.keys import hash_for_config

        return {
            "state": f"sqlite:///{tmp / 'state.db'}",
            "upstreams": {"notes": {"url": upstream_url, "timeout": 5}},
            "virtual_servers": {"open": {"auth": "none"}, "keyed": {}},
            "auth": {"keys": [{"name": "fuzzer", "hash": hash_for_config(self.key), "roles": ["admin", "user"]}]},
            "roles": {"user": {"allow_tools": ["notes.*"]}},
            "limits": {"max_body_bytes": MAX_BODY, "header_timeout": 5},
        }

    def __enter__(self) -> FuzzTarget:
        self._tmp = tempfile.TemporaryDirectory(prefix="stile-fuzz-")
        tmp = Path(self._tmp.name)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(self.src), str(REPO),
                                                            os.environ.get("PYTHONPATH", "")])}
        try:
            up_port = free_port()
            self._start([sys.executable, "-m", "stile.examples_servers.notes_server", "--port", str(up_port)],
                        up_port, "notes upstream", env, subprocess.DEVNULL)
            cfg = tmp / "stile.yaml"
            cfg.write_text(yaml.safe_dump(self.config(f"http://127.0.0.1:{up_port}/mcp", tmp)), encoding="utf-8")
            self.log_path = tmp / "stile.log"
            self.port = free_port()
            with self.log_path.open("wb") as logf:
                self._start([sys.executable, "-m", "stile", "serve", "--config", str(cfg), "--port", str(self.port),
                             "--log-level", "info"], self.port, "stile", env, logf)
            self.wait_healthy()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _start(self, argv: list[str], port: int, what: str, env: dict[str, str], out: Any) -> None:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                cwd=REPO, start_new_session=True)
        self._procs.append(proc)
        _wait_port(port, proc, what)

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        for proc in reversed(self._procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
        self._procs.clear()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    @property
    def gateway(self) -> subprocess.Popen[bytes]:
        return self._procs[-1]

    def wait_healthy(self, deadline_s: float = 30.0) -> None:
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            if self.gateway.poll() is not None:
                raise RuntimeError(f"stile exited with {self.gateway.returncode}: {self.new_log()[-3000:]}")
            if exchange(self.port, request("GET", "/healthz", {"Connection": "close"}), timeout=1).status == 200:
                return
            time.sleep(0.05)  # polling between attempts
        raise RuntimeError("stile /healthz not up in time")

    def new_log(self) -> str:
        """Log text written since the last call."""
        with self.log_path.open("rb") as f:
            f.seek(self._log_offset)
            data = f.read()
        self._log_offset += len(data)
        return data.decode("utf-8", errors="replace")

    def rss_mb(self) -> float:
        proc = psutil.Process(self.gateway.pid)
        return float(sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)])) / 2**20


_AUTH_PARAM = re.compile(r'\s*([a-z_]+)="((?:[^"\\]|\\.)*)"\s*(?:,|$)')
_CHALLENGE_KEYS = {"realm", "resource_metadata", "scope", "error", "error_description"}


def challenge_problems(value: str) -> list[str]:
    """A WWW-Authenticate value must be `Bearer k="v", ...` with known, unique keys (no forged parameters)."""
    if not value.startswith("Bearer "):
        return [f"WWW-Authenticate not a Bearer challenge: {value!r}"]
    rest, keys = value[7:], []
    while rest:
        match = _AUTH_PARAM.match(rest)
        if match is None:
            return [f"WWW-Authenticate malformed: {value!r}"]
        keys.append(match.group(1))
        rest = rest[match.end():]
    if len(set(keys)) != len(keys) or not set(keys) <= _CHALLENGE_KEYS:
        return [f"WWW-Authenticate forged parameters {keys}: {value!r}"]
    return []


def answer_problems(ans: Answer) -> list[str]:
    """What is wrong with one answer: a 5xx, a -32603 internal error, a malformed challenge."""
    problems = []
    if ans.status >= 500:
        problems.append(f"HTTP {ans.status}")
    if -32603 in ans.jsonrpc_codes():
        problems.append("JSON-RPC -32603 internal error")
    challenge = ans.header("www-authenticate")
    if challenge is not None:
        problems += challenge_problems(challenge)
    return problems


def log_problems(text: str) -> list[str]:
    """Traceback / unhandled-error lines in a stretch of log, with the exception lines that name the error."""
    lines = text.splitlines()
    if not any(BAD_LOG.search(line) for line in lines):
        return []
    return [line for line in lines if BAD_LOG.search(line) or EXC_LINE.match(line)]


def liveness_problems(target: FuzzTarget) -> list[str]:
    """`/healthz` and one real tools/call on each virtual server must still work."""
    problems = []
    if target.gateway.poll() is not None:
        return [f"gateway exited with {target.gateway.returncode}"]
    if exchange(target.port, request("GET", "/healthz", {"Connection": "close"})).status != 200:
        problems.append("/healthz is not 200")
    for vs, key in (("open", None), ("keyed", target.key)):
        ans = exchange(target.port, modern_call("notes__list_notes", {}, key, vs), timeout=10)
        if ans.status != 200 or ans.jsonrpc_codes():
            problems.append(f"tools/call on {vs}: HTTP {ans.status} {ans.body[:200]!r}")
    return problems


class SseStream:
    """A legacy `GET /sse/<vs>` stream held open on a raw socket; `session_id` names its POST URL."""

    def __init__(self, port: int, vs: str = "open", headers: dict[str, str] | None = None) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.sock.sendall(request("GET", f"/sse/{vs}", {"Accept": "text/event-stream", **(headers or {})},
                                  length=False))
        self.buf = b""
        event = self.next_event(b"endpoint")
        match = re.search(rb"session_id=([A-Za-z0-9_-]+)", event)
        if match is None:
            raise RuntimeError(f"no endpoint event: {self.buf[:500]!r}")
        self.session_id = match.group(1).decode()
        self.messages = f"/sse/{vs}/messages?session_id={self.session_id}"

    def next_event(self, contains: bytes = b"", timeout: float = 5.0) -> bytes:
        """The next SSE event whose text contains `contains` (earlier ones are dropped)."""
        end = time.monotonic() + timeout
        while True:
            while b"\n\n" in self.buf or b"\r\n\r\n" in self.buf:
                event, _, self.buf = self.buf.replace(b"\r\n", b"\n").partition(b"\n\n")
                if contains in event and not event.startswith(b":"):
                    return event
            if time.monotonic() > end:
                raise TimeoutError(f"no SSE event with {contains!r}: {self.buf[-500:]!r}")
            self.sock.settimeout(max(0.05, end - time.monotonic()))
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("SSE stream closed")
            self.buf += chunk

    def drain(self) -> None:
        """Drop whatever the stream sent so far (without waiting)."""
        self.sock.settimeout(0.0)
        try:
            while self.sock.recv(65536):
                pass
        except BlockingIOError:
            pass
        finally:
            self.sock.settimeout(5)
        self.buf = b""

    def close(self) -> None:
        self.sock.close()
