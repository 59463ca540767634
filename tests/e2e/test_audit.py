"""The audit trail: one hash-chained line per request, redacted arguments, tampering detected."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mcp import Client
from typer.testing import CliRunner

from stile.cli.main import app
from stile.observe.audit_sinks import verify_jsonl as verify
from tests.support import notes_upstream, stile_server


@pytest.fixture(scope="module")
def trail(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("audit") / "audit.jsonl"
    import asyncio

    async def calls(base: str) -> None:
        async with Client(f"{base}/mcp/v", mode="2026-07-28") as client:
            await client.call_tool("notes__add_note", {"title": "t", "text": "password is hunter2"})
            await client.call_tool("notes__get_note", {"note_id": 1})
            with pytest.raises(Exception, match="Unknown tool"):
                await client.call_tool("nope", {"api_key": "abc"})
        async with Client(f"{base}/mcp/v", mode="legacy") as legacy:
            await legacy.list_tools()

    with notes_upstream() as url:
        config = {"upstreams": {"notes": {"url": url}}, "virtual_servers": {"v": {"auth": "none"}},
                  "audit": {"jsonl": str(path)}}
        with stile_server(config) as base:
            asyncio.run(calls(base))
    return path  # the server has stopped: everything is flushed


def _events(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_every_request_is_recorded_with_its_outcome_and_principal(trail: Path) -> None:
    calls = [e for e in _events(trail) if e["method"] == "tools/call"]
    assert [(e["tool"], e["outcome"]) for e in calls] == [
        ("notes__add_note", "ok"), ("notes__get_note", "ok"), ("(unknown)", "error")]
    assert calls[0]["upstream"] == "notes" and calls[2]["error_code"] == -32602
    assert calls[2]["error_type"] == "InvalidParams" and "Unknown tool" in calls[2]["reason"]
    assert calls[0]["principal"] == {"agent": None, "user": None, "roles": [], "auth": "none"}
    assert all(isinstance(e["latency_ms"], float) for e in calls)


def test_a_legacy_session_start_is_recorded_too(trail: Path) -> None:
    events = _events(trail)
    init = [e for e in events if e["method"] == "initialize"]
    assert len(init) == 1 and init[0]["outcome"] == "ok" and init[0]["era"] == "legacy"
    assert init[0]["virtual_server"] == "v" and init[0]["trace_id"]
    lists = [e for e in events if e["method"] == "tools/list" and e["era"] == "legacy"]
    assert lists and lists[-1]["seq"] > init[0]["seq"]


def test_secret_looking_arguments_are_masked_and_the_rest_kept(trail: Path) -> None:
    calls = [e for e in _events(trail) if e["method"] == "tools/call"]
    assert calls[0]["arguments"] == {"title": "t", "text": "password is hunter2"}  # a value, not a key
    assert calls[2]["arguments"] == {"api_key": "***"}


def test_an_intact_trail_verifies(trail: Path) -> None:
    assert verify(trail) == []
    result = CliRunner().invoke(app, ["audit", "verify", "--file", str(trail)])
    assert result.exit_code == 0 and "chain intact" in result.output


@pytest.mark.parametrize("tamper", ["modify", "delete", "swap"])
def test_tampering_is_detected_and_located(trail: Path, tmp_path: Path, tamper: str) -> None:
    lines = trail.read_text().splitlines()
    assert len(lines) >= 3
    if tamper == "modify":
        lines[1] = lines[1].replace('"outcome":"ok"', '"outcome":"denied"')
    elif tamper == "delete":
        del lines[1]
    else:
        lines[1], lines[2] = lines[2], lines[1]
    bad = tmp_path / "tampered.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    problems = verify(bad)
    assert problems and problems[0].startswith("line 2:"), problems
    result = CliRunner().invoke(app, ["audit", "verify", "--file", str(bad)])
    assert result.exit_code == 1
