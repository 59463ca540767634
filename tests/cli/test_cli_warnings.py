"""Small things a first-hour user trips on: `--version`, and warnings where a command would otherwise stay silent."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from stile import __version__
from stile.cli.main import app
from tests.support import REPO

runner = CliRunner()
IDENTITY = str(REPO / "examples" / "identity.yaml")


def run(*args: str) -> Result:
    return runner.invoke(app, list(args))


def test_dash_dash_version() -> None:
    result = run("--version")
    assert result.exit_code == 0 and result.stdout.strip() == __version__


def test_help_lists_serve_check_demo_first() -> None:
    result = run("--help")
    assert result.exit_code == 0
    listed = [m.group(1) for m in re.finditer(r"^\S (\w+) ", result.stdout, re.M)]
    assert listed[:3] == ["serve", "check", "demo"], listed


@pytest.mark.parametrize("text", ["", "upstreams: {}\n", "virtual_servers: {}\n"])
def test_an_empty_config_loads_with_a_warning(tmp_path: Path, text: str) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text(text, encoding="utf-8")
    result = run("check", "--offline", "--config", str(path))
    assert result.exit_code == 0, result.output
    assert f"warning {path}: no upstreams" in result.stderr
    assert f"warning {path}: no virtual servers: the gateway serves no /mcp/<name> endpoint" in result.stderr


def test_a_config_with_both_has_no_warning(tmp_path: Path) -> None:
    result = run("check", "--offline", "--config", IDENTITY)
    assert result.exit_code == 0 and "warning" not in result.stderr


def test_a_role_less_key_is_created_with_a_warning(tmp_path: Path) -> None:
    state = f"sqlite:///{tmp_path / 'keys.db'}"
    result = run("keys", "create", "--state", state, "--name", "bot", "--roles", "")
    assert result.exit_code == 0, result.output
    assert "warning: key 'bot': it has no roles" in result.stderr and "(403)" in result.stderr
    result = run("keys", "create", "--state", state, "--name", "bot2", "--roles", "reader")
    assert result.exit_code == 0 and "warning" not in result.stderr


def test_a_key_with_a_role_the_config_does_not_define_warns(tmp_path: Path) -> None:
    config = tmp_path / "stile.yaml"
    config.write_text((REPO / "examples" / "identity.yaml").read_text(encoding="utf-8"), encoding="utf-8")
    result = run("keys", "create", "--config", str(config), "--name", "bot", "--roles", "support,suport")
    assert result.exit_code == 0, result.output
    assert "role 'suport' is not defined under `roles:`" in result.stderr
    assert "role 'support' is not" not in result.stderr


def test_policy_test_flags_an_undefined_role() -> None:
    result = run("policy", "test", "--config", IDENTITY, "--principal", "bot:suport", "--call", "github.list_issues")
    assert result.exit_code == 1
    assert "warning: role 'suport' is not defined under `roles:`" in result.stderr
    assert "defined: analytics, support" in result.stderr
    ok = run("policy", "test", "--config", IDENTITY, "--principal", "bot:support", "--call", "github.list_issues")
    assert ok.exit_code == 0 and "warning" not in ok.stderr
