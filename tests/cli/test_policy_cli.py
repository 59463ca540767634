"""`stile policy test` explains decisions for examples/identity.yaml."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from stile.cli.main import app

EXAMPLE = str(Path(__file__).resolve().parents[2] / "examples" / "identity.yaml")
runner = CliRunner()


def _run(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["policy", "test", "--config", EXAMPLE, *args])
    return result.exit_code, result.output


@pytest.mark.parametrize(("status", "code"), [("closed", 1), ("open", 0), ("pending", 0)])
def test_the_per_argument_rule_decides_ticket_updates(status: str, code: int) -> None:
    exit_code, out = _run("--principal", "bot:support", "--call", "crm.update_ticket",
                          "--args", f'{{"status": "{status}"}}')
    assert exit_code == code, out
    if code:
        assert "DENY by rule tickets-open-only: tickets can only be moved to open or pending" in out


def test_a_missing_argument_fails_closed() -> None:
    exit_code, out = _run("--principal", "bot:support", "--call", "crm.update_ticket")
    assert exit_code == 1 and "tickets-open-only" in out


def test_a_read_only_role_is_refused_a_tool_without_the_read_only_annotation() -> None:
    exit_code, out = _run("--principal", "report:analytics", "--call", "warehouse.drop_table")
    assert exit_code == 1 and "hidden by roles ['analytics']" in out
    exit_code, out = _run("--principal", "report:analytics", "--call", "warehouse.query",
                          "--annotations", '{"readOnlyHint": true}')
    assert exit_code == 0, out


def test_a_shadow_rule_is_reported_but_not_enforced() -> None:
    exit_code, out = _run("--principal", "report:analytics", "--call", "warehouse.query",
                          "--annotations", '{"readOnlyHint": true}', "--args", '{"limit": 50000}')
    assert exit_code == 0
    assert "shadow rule watch-big-queries: would deny (not enforced)" in out


def test_a_role_for_another_virtual_server_is_not_enough() -> None:
    exit_code, out = _run("--principal", "bot:support", "--call", "warehouse.query", "--virtual-server", "analytics")
    assert exit_code == 1 and "no role of ['support'] grants this virtual server" in out


@pytest.mark.parametrize("bad", [["--args", "{nope"], ["--args", "[1]"], ["--virtual-server", "nope"]])
def test_bad_input_is_a_clear_error_with_exit_2(bad: list[str]) -> None:
    exit_code, out = _run("--principal", "bot:support", "--call", "crm.update_ticket", *bad)
    assert exit_code == 2
    assert "error:" in out and "Traceback" not in out


OR_RULE = 'tool.name == "vault.add_note" && arguments.title == "zzz" || principal.agent == "blocked-bot"'


def _or_rule_config(tmp_path: Path, kind: str) -> str:
    path = tmp_path / "stile.yaml"
    path.write_text(f"""
upstreams:
  vault: {{url: "http://127.0.0.1:3001/mcp"}}
  crm: {{url: "http://127.0.0.1:3002/mcp"}}
rules:
  - name: or-rule
    {kind}: '{OR_RULE}'
    reason: blocked
virtual_servers:
  open: {{upstreams: [vault, crm], auth: none}}
""")
    return str(path)


@pytest.mark.parametrize(("kind", "agent", "code"), [
    ("deny", "blocked-bot", 1), ("deny", "good-bot", 0), ("allow", "blocked-bot", 0), ("allow", "good-bot", 1)])
def test_a_rule_whose_top_level_operator_is_or_is_decided_for_every_tool(
        tmp_path: Path, kind: str, agent: str, code: int) -> None:
    result = runner.invoke(app, ["policy", "test", "--config", _or_rule_config(tmp_path, kind),
                                 "--principal", f"{agent}:", "--call", "crm.search"])
    assert result.exit_code == code, result.output
    assert ("DENY by rule or-rule: blocked" in result.output) is bool(code), result.output
