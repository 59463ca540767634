"""`stile audit search | tail | verify` and `stile usage` through typer's CliRunner, over files and SQLite."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml
from sqlalchemy.ext.asyncio import create_async_engine
from typer.testing import CliRunner, Result

from stile.cli.main import app
from stile.stores.keys import async_url
from tests.observe.test_audit_query import ROWS, T0, insert_rows, make_events

runner = CliRunner()
SINCE = (T0.replace(hour=0)).isoformat()


def run(*args: str) -> Result:
    return runner.invoke(app, list(args))


def json_lines(result: Result) -> list[dict[str, Any]]:
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def ids(events: list[dict[str, Any]]) -> list[int]:
    return [int(e["id"].split("-")[1]) for e in events]


@pytest.fixture
def trail(tmp_path: Path) -> Path:
    path = tmp_path / "audit.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in make_events()))
    return path


@pytest.fixture
def state(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'stile.db'}"
    asyncio.run(insert_rows(url, make_events()))
    return url


def config_file(tmp_path: Path, audit: dict[str, Any], **extra: Any) -> Path:
    path = tmp_path / "stile.yaml"
    path.write_text(yaml.safe_dump({"upstreams": {}, "virtual_servers": {}, "audit": audit, **extra}))
    return path


@pytest.mark.parametrize("kind", ["file", "state"])
def test_search_json_with_filters(kind: str, trail: Path, state: str) -> None:
    source = ["--file", str(trail)] if kind == "file" else ["--state", state]
    assert ids(json_lines(run("audit", "search", *source, "--json"))) == [1, 2, 3, 4, 5, 6, 7]
    assert ids(json_lines(run("audit", "search", *source, "--json", "--agent", "ci-bot", "-n", "2"))) == [3, 7]
    got = json_lines(run("audit", "search", *source, "--json", "--tool", "notes__*", "--outcome", "ok,denied"))
    assert ids(got) == [1, 2, 5]
    got = json_lines(run("audit", "search", *source, "--json", "--tool", "notes.*", "--outcome", "ok,denied"))
    assert ids(got) == [1, 2, 5]  # upstream.tool globs, as in config, find the same events
    got = json_lines(run("audit", "search", *source, "--json", "--since", "2026-11-24T17:02:00Z",
                         "--until", "2026-11-24T17:04:00+00:00", "--upstream", "files"))
    assert ids(got) == [4]
    assert got[0] == make_events()[3]
    assert ids(json_lines(run("audit", "search", *source, "--json", "--server", "w", "--user", "alice"))) == [7]


def test_search_prints_a_table(trail: Path) -> None:
    result = run("audit", "search", "--file", str(trail), "--agent", "helper")
    assert result.exit_code == 0, result.output
    assert "2026-11-24 17:03:00" in result.stdout and "denied" in result.stdout and "helper" in result.stdout
    assert "ci-bot" not in result.stdout
    empty = run("audit", "search", "--file", str(trail), "--agent", "nobody")
    assert empty.exit_code == 0 and "no matching events" in empty.stdout


def test_markup_in_audit_data_is_printed_literally(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    row = (0, "[bold]evil[/]", None, "x", "u", "ok", 1.0, 0.0, "v")
    path.write_text(json.dumps(make_events([row])[0]) + "\n")
    result = run("audit", "search", "--file", str(path))
    assert result.exit_code == 0 and "[bold]evil[/]" in result.stdout


def test_config_picks_the_store_or_the_file(tmp_path: Path, trail: Path) -> None:
    cfg = config_file(tmp_path, {"store": False, "jsonl": str(trail)})
    assert ids(json_lines(run("audit", "search", "--config", str(cfg), "--json", "-n", "1"))) == [7]
    db = tmp_path / "stile.db"  # the state store beside the config (no `state` key)
    asyncio.run(insert_rows(f"sqlite:///{db}", make_events(ROWS[:2])))
    cfg = config_file(tmp_path, {"store": True, "jsonl": str(trail)})
    assert ids(json_lines(run("audit", "search", "--config", str(cfg), "--json"))) == [1, 2]
    cfg = config_file(tmp_path, {"store": False})
    result = run("audit", "search", "--config", str(cfg))
    assert result.exit_code == 2 and "no audit source" in result.stderr


def test_tail_prints_the_last_lines(trail: Path, state: str) -> None:
    result = run("audit", "tail", "--file", str(trail), "-n", "2")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("2026-11-24 17:05:00 unauthenticated") and "-/- v tools/list 0ms" in lines[0]
    assert lines[1].startswith("2026-11-24 17:06:00 error") and "ci-bot/alice w tools/call files__read 60ms" in lines[1]
    assert ids(json_lines(run("audit", "tail", "--state", state, "-n", "3", "--json", "--outcome", "ok"))) == [1, 2, 4]


def test_usage_json_and_table(trail: Path, state: str) -> None:
    for source in (["--file", str(trail)], ["--state", state]):
        rows = json_lines(run("usage", *source, "--by", "agent", "--since", SINCE, "--json"))
        assert rows == [
            {"by": "agent", "key": "ci-bot", "calls": 4, "errors": 2, "p50_ms": 20.0, "p95_ms": 60.0, "cost": 4.5},
            {"by": "agent", "key": "helper", "calls": 2, "errors": 1, "p50_ms": 40.0, "p95_ms": 50.0, "cost": 2.0},
            {"by": "agent", "key": None, "calls": 1, "errors": 1, "p50_ms": 0.0, "p95_ms": 0.0, "cost": 0.0},
        ]
    rows = json_lines(run("usage", "--file", str(trail), "--by", "upstream", "--since", SINCE,
                          "--until", "2026-11-24T17:04:00Z", "--json"))
    assert [(r["key"], r["calls"], r["cost"]) for r in rows] == [("notes", 3, 2.5), ("files", 1, 2.0)]
    table = run("usage", "--file", str(trail), "--since", SINCE)
    assert table.exit_code == 0, table.output
    assert "TOOL" in table.stdout and "notes__add_note" in table.stdout and "(none)" in table.stdout
    assert "30.0" in table.stdout and "50.0" in table.stdout  # add_note's p50 and p95
    old = trail.with_name("old.jsonl")
    old.write_text("".join(json.dumps(e) + "\n" for e in make_events(start=datetime.now(UTC) - timedelta(days=3))))
    recent = run("usage", "--file", str(old))  # default: the last 24h
    assert recent.exit_code == 0 and "no events in range" in recent.stdout


def test_verify_a_file_and_a_store(trail: Path, state: str, tmp_path: Path) -> None:
    result = run("audit", "verify", "--file", str(trail))
    assert result.exit_code == 0 and "chain intact" in result.output
    result = run("audit", "verify", "--state", state)
    assert result.exit_code == 0, result.output
    assert "chain intact" in result.stdout
    cfg = config_file(tmp_path, {"store": True, "jsonl": str(trail)}, state=state)
    result = run("audit", "verify", "--config", str(cfg))
    assert result.exit_code == 0, result.output
    assert result.stdout.count("chain intact") == 2

    async def tamper() -> None:
        engine = create_async_engine(async_url(state))
        async with engine.begin() as conn:
            await conn.execute(sa.text("UPDATE stile_audit_events SET outcome = 'ok' WHERE seq = 3"))
        await engine.dispose()

    asyncio.run(tamper())
    result = run("audit", "verify", "--state", state)
    assert result.exit_code == 1 and "seq 3" in result.stdout


def test_verify_of_an_empty_trail_warns_instead_of_calling_it_intact(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.touch()
    state = f"sqlite:///{tmp_path / 'empty.db'}"
    asyncio.run(insert_rows(state, []))
    for source in (["--file", str(empty)], ["--state", state]):
        result = run("audit", "verify", *source)
        assert result.exit_code == 0, result.output
        assert "no audit events (nothing to verify)" in result.stderr
        assert "chain intact" not in result.stdout


def test_verify_with_a_config_whose_store_does_not_exist_checks_the_file(tmp_path: Path, trail: Path) -> None:
    cfg = config_file(tmp_path, {"jsonl": str(trail)})  # store on, but no stile.db beside the config yet
    result = run("audit", "verify", "--config", str(cfg))
    assert result.exit_code == 0 and result.stdout.count("chain intact") == 1



@pytest.mark.parametrize(("args", "message"), [
    (["audit", "search"], "pass exactly one of --config, --state or --file"),
    (["audit", "search", "--file", "a.jsonl", "--state", "sqlite:///x.db"], "(got --state, --file)"),
    (["audit", "search", "--file", "{tmp}/missing.jsonl"], "no audit file at"),
    (["audit", "search", "--state", "mysql://h/db"], "bad audit source"),
    (["audit", "search", "--state", "sqlite:///{tmp}/missing.db"], "no state database"),
    (["audit", "search", "--state", "postgresql://postgres:sekrit@127.0.0.1:1/test"],
     "cannot query audit store postgresql://postgres:***@127.0.0.1:1/test"),
    (["audit", "search", "--file", "{trail}", "--since", "yesterday"], "--since: bad time 'yesterday'"),
    (["audit", "search", "--file", "{trail}", "--until", "soon"], "--until: bad time"),
    (["audit", "search", "--file", "{trail}", "-n", "0"], "at least 1"),
    (["audit", "search", "--file", "{trail}", "--outcome", "ok,bogus"],
     "--outcome: unknown outcome 'bogus': use ok, is_error, error, denied, unauthenticated"),
    (["audit", "tail", "--file", "{trail}", "--outcome", "denyed"], "unknown outcome 'denyed'"),
    (["audit", "search", "--config", "{tmp}/nope.yaml"], "cannot read"),
    (["audit", "tail", "--state", "postgresql://postgres@127.0.0.1:1/test"], "cannot query audit store"),
    (["usage", "--file", "{trail}", "--since", "1d", "--until", "2d"], "--until must be later than --since"),
    (["usage", "--file", "{trail}", "--since", "-3h"], "--since: bad time"),
    (["usage"], "pass exactly one"),
    (["audit", "verify"], "no audit trail to verify"),
    (["audit", "verify", "--state", "postgresql://postgres@127.0.0.1:1/test"], "cannot verify audit store"),
    (["audit", "verify", "--state", "sqlite:///{tmp}/missing.db"], "no state database"),
])
def test_bad_input_exits_2_with_a_clear_message(args: list[str], message: str, tmp_path: Path, trail: Path) -> None:
    result = run(*(a.format(tmp=tmp_path, trail=trail) for a in args))
    assert result.exit_code == 2, result.output
    assert message in result.stderr, result.stderr
    assert "Traceback" not in result.output and "sekrit" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_an_unknown_group_is_refused_by_the_cli(trail: Path) -> None:
    result = run("usage", "--file", str(trail), "--by", "colour")
    assert result.exit_code == 2 and "colour" in result.output
