"""Example HTTP upstream: a small notes service (tools, resources, prompts, progress)."""

from __future__ import annotations

import argparse
from typing import Annotated

from mcp.server.mcpserver import Context, MCPServer
from mcp.types import ToolAnnotations
from pydantic import Field

mcp = MCPServer("notes", version="1.0.0", instructions="A tiny notes service behind Stile.")
_notes: dict[int, dict[str, str]] = {1: {"title": "welcome", "text": "Stile fronts this server."}}


@mcp.tool(annotations=ToolAnnotations(read_only_hint=True))
def list_notes() -> list[dict[str, object]]:
    """List every note (id and title)."""
    return [{"id": i, "title": n["title"]} for i, n in sorted(_notes.items())]


@mcp.tool(annotations=ToolAnnotations(read_only_hint=True))
def get_note(note_id: int) -> str:
    """Return the text of one note."""
    if note_id not in _notes:
        raise ValueError(f"no note {note_id}")
    return _notes[note_id]["text"]


@mcp.tool()
def add_note(title: str, text: str) -> int:
    """Add a note; returns its id."""
    new_id = max(_notes, default=0) + 1
    _notes[new_id] = {"title": title, "text": text}
    return new_id


@mcp.tool(annotations=ToolAnnotations(destructive_hint=True))
def delete_note(note_id: int) -> bool:
    """Delete a note."""
    return _notes.pop(note_id, None) is not None


@mcp.tool()
async def count_slowly(n: Annotated[int, Field(ge=1, le=100)], ctx: Context) -> str:
    """Count to n, reporting progress at each step."""
    for i in range(1, n + 1):
        await ctx.report_progress(i, n, f"step {i}")
    return f"counted to {n}"


@mcp.resource("notes://index", mime_type="application/json")
def index() -> str:
    """All note titles."""
    return ", ".join(n["title"] for n in _notes.values())


@mcp.resource("notes://note/{note_id}")
def note(note_id: str) -> str:
    """One note's text."""
    return _notes.get(int(note_id), {"text": ""})["text"]


@mcp.prompt()
def summarize(style: str = "short") -> str:
    """Ask for a summary of all notes."""
    return f"Summarize these notes in a {style} style: " + "; ".join(n["text"] for n in _notes.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=3101)
    args = parser.parse_args()
    mcp.run(transport="streamable-http", host="127.0.0.1", port=args.port, streamable_http_path="/mcp")


if __name__ == "__main__":
    main()
