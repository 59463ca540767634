"""`stile demo`: the gateway on the embedded default (examples/demo.yaml) with the bundled example upstreams.

In a source checkout the default is `examples/demo.yaml` itself (its state, `stile.db`, beside it). An
installed package carries the same file as `stile/examples_servers/demo.yaml` (pyproject force-include):
it is copied to `$XDG_STATE_HOME/stile/demo/` (default `~/.local/state/stile/demo/`) and served from
there, so the state database is written somewhere writable and `stile audit tail --config` finds it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console

from stile.cli.endpoints import PortBusy, check_port, endpoint_lines, stile_command
from stile.config.load import ConfigError, load_config, state_url_for

out = Console()
REPO_ROOT = Path(__file__).resolve().parents[3]
NOTES_PORT_ENV = "STILE_DEMO_NOTES_PORT"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[bytes], deadline: float) -> None:
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"example upstream exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"example upstream did not listen on port {port}")


def demo_environment(notes_port: int, config: Path) -> dict[str, str]:
    """Environment the demo config expands (${...}) to find the bundled upstreams; the files upstream
    serves the config's own directory."""
    return {
        NOTES_PORT_ENV: str(notes_port),
        "STILE_PYTHON": sys.executable,
        "STILE_DEMO_FILES_ROOT": str(config.resolve().parent),
    }


def default_config() -> Path:
    """`examples/demo.yaml` in a source checkout, else the packaged copy, copied to a writable state directory."""
    checkout = REPO_ROOT / "examples" / "demo.yaml"
    if checkout.is_file():
        return checkout
    from importlib.resources import files

    packaged = files("stile.examples_servers").joinpath("demo.yaml")
    state = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "stile" / "demo"
    state.mkdir(parents=True, exist_ok=True)
    target = state / "demo.yaml"
    target.write_text(packaged.read_text(encoding="utf-8"), encoding="utf-8")
    return target


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def run_demo(port: int, config: Path | None) -> None:
    from stile.server import run

    try:
        check_port("127.0.0.1", port, hint="--port N (make demo PORT=N)")
    except PortBusy as exc:
        raise SystemExit(f"error: {exc}") from None
    try:
        path = config or default_config()
    except OSError as exc:
        raise SystemExit(f"error: cannot prepare the demo config: {exc}") from None
    notes_port = _free_port()
    os.environ.update(demo_environment(notes_port, path))
    try:
        loaded = load_config(path)
    except ConfigError as exc:
        raise SystemExit("\n".join(exc.problems)) from exc
    # uvicorn re-raises SIGTERM after its graceful shutdown; make that unwind through `finally` below
    # (the default action would kill this process and orphan the notes upstream)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    notes = subprocess.Popen(  # the HTTP example upstream; the stdio one is spawned by Stile itself
        [sys.executable, "-m", "stile.examples_servers.notes_server", "--port", str(notes_port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        _wait_port(notes_port, notes, time.monotonic() + 20)
        base = f"http://127.0.0.1:{port}"
        out.print(f"[bold]Stile demo[/bold] on {base}  (config {path})")
        for line in endpoint_lines(loaded.config, base):
            out.print(line, soft_wrap=True, highlight=False)
        out.print(f"  metrics: {base}/metrics   audit trail: {stile_command()} audit tail -f --config {path}",
                  soft_wrap=True, highlight=False)
        first = next(iter(loaded.config.virtual_servers))
        out.print("\nPaste into Python (pip install mcp==2.3.0):\n")
        out.print(
            "import asyncio\nfrom mcp import Client\n\nasync def main():\n"
            f'    async with Client("{base}/mcp/{first}") as c:\n'
            "        print([t.name for t in (await c.list_tools()).tools])\n\nasyncio.run(main())\n",
            highlight=False, markup=False, soft_wrap=True,
        )
        run(loaded.config, host="127.0.0.1", port=port, state_url=state_url_for(loaded))
    finally:
        notes.terminate()
        try:
            notes.wait(5)
        except subprocess.TimeoutExpired:
            notes.kill()
