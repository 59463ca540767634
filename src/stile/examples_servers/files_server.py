"""Example stdio upstream: read-only access to the files under FILES_ROOT."""

from __future__ import annotations

import os
from pathlib import Path

from mcp.server.mcpserver import MCPServer
from mcp.types import ToolAnnotations

mcp = MCPServer("files", version="1.0.0", instructions="Read files under a root folder.")


def _root() -> Path:
    return Path(os.environ.get("FILES_ROOT", ".")).resolve()


def _safe(path: str) -> Path:
    target = (_root() / path).resolve()
    if not target.is_relative_to(_root()):
        raise ValueError("path escapes the root")
    return target


@mcp.tool(annotations=ToolAnnotations(read_only_hint=True))
def list_files() -> list[str]:
    """List files under the root (relative paths, sorted)."""
    root = _root()
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())[:1000]


@mcp.tool(annotations=ToolAnnotations(read_only_hint=True))
def read_file(path: str) -> str:
    """Read one text file."""
    return _safe(path).read_text(encoding="utf-8", errors="replace")


@mcp.tool(annotations=ToolAnnotations(read_only_hint=True))
def read_env(name: str) -> str:
    """Show one environment variable of this process (to demonstrate Stile clears the environment)."""
    return os.environ.get(name, "<unset>")


@mcp.resource("file:///readme")
def readme() -> str:
    """A fixed document."""
    return "Files served over stdio through Stile."


if __name__ == "__main__":
    mcp.run(transport="stdio")
