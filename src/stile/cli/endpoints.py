"""What `serve` and `demo` tell a user before the gateway starts: a busy port, the endpoint URLs, and the
`stile` command as it can be typed in this shell."""

from __future__ import annotations

import errno
import shutil
import socket
import sys
from pathlib import Path

from stile.config.model import GatewayConfig


class PortBusy(Exception):
    """The port cannot be bound (message fit to show a user)."""


def check_port(host: str, port: int, *, hint: str = "--port N") -> None:
    """Raise PortBusy when `host:port` cannot be bound now (in use, or not ours to bind)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: TIME_WAIT is no conflict
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PortBusy(f"port {port} on {host} is already in use (another Stile, or another program): "
                               f"stop it or choose another port with {hint}") from None
            raise PortBusy(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def base_url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def endpoint_lines(cfg: GatewayConfig, base: str) -> list[str]:
    """One line per virtual server: its Streamable HTTP URL and its legacy SSE URL."""
    return [f"  virtual server {name}: {base}/mcp/{name}   (legacy SSE: {base}/sse/{name})"
            for name in cfg.virtual_servers]


def stile_command() -> str:
    """`stile` when that resolves to this installation, else the path of this installation's `stile`."""
    ours = Path(sys.executable).parent / "stile"
    found = shutil.which("stile")
    if found is not None and (not ours.exists() or Path(found).resolve() == ours.resolve()):
        return "stile"
    return str(ours) if ours.exists() else f"{sys.executable} -m stile"
