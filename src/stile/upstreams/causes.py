"""Upstream failures in words: what went wrong (connection refused, DNS failure, TLS error, timeout...)
and which upstream it was (its URL or command), without secrets.

Two texts per failure: the short *cause* (`connection refused`) goes to clients inside
`upstream 'name': ...`; the *detail* (`http://host:port/mcp: connection refused`, or a stdio process's
exit code and last stderr lines) goes to logs, `stile check` and the `/readyz` reason (callers allowed to
see details only). URLs lose their user-info and query (a token may live there); commands are shown as
configured, environment never.
"""

from __future__ import annotations

import shlex
import signal
import socket
import ssl
from urllib.parse import urlsplit, urlunsplit

from stile.config.model import UpstreamConfig
from stile.wire.errors import StileError, UpstreamError

MAX_TARGET = 160


def target_of(cfg: UpstreamConfig) -> str:
    """The upstream's URL (no user-info, no query) or its command line, for messages."""
    if cfg.url is not None:
        try:
            parts = urlsplit(cfg.url)
            netloc = parts.hostname or ""
            if ":" in netloc:
                netloc = f"[{netloc}]"
            if parts.port is not None:
                netloc += f":{parts.port}"
        except ValueError:
            return cfg.url.split("?", 1)[0]
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    text = shlex.join(cfg.command or [])
    return text if len(text) <= MAX_TARGET else text[:MAX_TARGET - 3] + "..."


def os_cause(exc: BaseException, timeout: float | None = None) -> str:
    """A connect-time failure in words."""
    if isinstance(exc, TimeoutError):
        return f"timeout after {timeout:g}s" if timeout is not None else "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, socket.gaierror):
        return f"DNS lookup failed ({exc.strerror or exc})"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate verification failed ({exc.verify_message or exc.reason})"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error ({exc.reason or exc})"
    if isinstance(exc, ConnectionResetError):
        return "connection reset by the upstream"
    if isinstance(exc, OSError):
        text = exc.strerror or str(exc) or type(exc).__name__
        return text[0].lower() + text[1:] if text[:1].isupper() and not text[1:2].isupper() else text
    return str(exc) or type(exc).__name__


def http_status_cause(status: int) -> str:
    return f"HTTP status {status}"


def exit_cause(code: int | None) -> str:
    """How a stdio process ended (a negative code is the signal that killed it)."""
    if code is None:
        return "process closed its output"
    if code < 0:
        try:
            return f"process killed by signal {-code} ({signal.Signals(-code).name})"
        except ValueError:
            return f"process killed by signal {-code}"
    return f"process exited with code {code}"


def detail_of(exc: StileError, target: str) -> str:
    """The operator's text for a failure: its detail, else `target: cause`."""
    if isinstance(exc, UpstreamError):
        return exc.detail or f"{target}: {exc.cause}"
    return f"{target}: {exc.message}"
