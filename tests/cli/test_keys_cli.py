"""`stile keys` over a temporary SQLite state file, driven through typer's CliRunner."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner, Result

from stile.cli.keys import keys_app, parse_duration
from stile.stores.keys import ApiKeyRecord, open_key_store, split_key

app = typer.Typer()
app.add_typer(keys_app, name="keys")
runner = CliRunner()


@pytest.fixture
def state(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'stile.db'}"


def run(*args: str) -> Result:
    return runner.invoke(app, ["keys", *args])


def verify(state: str, key: str) -> ApiKeyRecord | None:
    async def go() -> ApiKeyRecord | None:
        store = open_key_store(state)
        try:
            return await store.verify(key)
        finally:
            await store.aclose()

    return asyncio.run(go())


def create(state: str, name: str, *extra: str) -> str:
    result = run("create", "--name", name, "--roles", "reader,writer", "--state", state, *extra)
    assert result.exit_code == 0, result.output
    key = result.stdout.rstrip("\n").splitlines()[-1]
    assert split_key(key) is not None, result.stdout
    return key


def test_create_prints_the_key_last_and_it_verifies(state: str) -> None:
    result = run("create", "--name", "ci", "--roles", "reader, writer", "--state", state)
    assert result.exit_code == 0, result.output
    lines = result.stdout.rstrip("\n").splitlines()
    key = lines[-1]
    assert split_key(key) is not None
    assert sum(key in line for line in lines) == 1  # printed exactly once
    assert key not in result.stderr
    record = verify(state, key)
    assert record is not None and record.name == "ci" and record.roles == ("reader", "writer")
    assert record.expires_at is None


def test_create_with_expiry(state: str) -> None:
    before = datetime.now(UTC)
    key = create(state, "temp", "--expires", "12h")
    record = verify(state, key)
    assert record is not None and record.expires_at is not None
    assert before + timedelta(hours=12) <= record.expires_at <= datetime.now(UTC) + timedelta(hours=12)


def test_list_plain_and_json(state: str) -> None:
    empty = run("list", "--state", state)
    assert empty.exit_code == 0 and "no keys" in empty.stdout
    key_a = create(state, "alpha")
    key_b = create(state, "beta", "--expires", "30d")
    assert run("revoke", "alpha", "--state", state).exit_code == 0

    plain = run("list", "--state", state)
    assert plain.exit_code == 0, plain.output
    assert "alpha" in plain.stdout and "beta" in plain.stdout and "revoked" in plain.stdout
    assert "active" in plain.stdout

    as_json = run("list", "--state", state, "--json")
    assert as_json.exit_code == 0, as_json.output
    rows = json.loads(as_json.stdout)
    assert [r["name"] for r in rows] == ["alpha", "beta"]
    assert [r["status"] for r in rows] == ["revoked", "active"]
    assert rows[0]["revoked_at"] is not None and rows[1]["expires_at"] is not None
    assert rows[1]["roles"] == ["reader", "writer"]
    for key in (key_a, key_b):
        secret = (split_key(key) or ("", ""))[1]
        assert secret not in plain.output and secret not in as_json.output


def test_revoke_by_name_and_id(state: str) -> None:
    key_a = create(state, "alpha")
    key_b = create(state, "beta")
    result = run("revoke", "alpha", "--state", state)
    assert result.exit_code == 0, result.output
    assert verify(state, key_a) is None
    assert verify(state, key_b) is not None
    key_id = (split_key(key_b) or ("", ""))[0]
    assert run("revoke", key_id, "--state", state).exit_code == 0
    assert verify(state, key_b) is None


def test_revoke_unknown_is_a_clear_error(state: str) -> None:
    create(state, "alpha")
    result = run("revoke", "nope", "--state", state)
    assert result.exit_code == 1
    assert "no active key" in result.stderr and "nope" in result.stderr
    assert isinstance(result.exception, SystemExit)


def test_duplicate_name_is_a_clear_error(state: str) -> None:
    create(state, "alpha")
    result = run("create", "--name", "alpha", "--roles", "reader", "--state", state)
    assert result.exit_code == 1
    assert "already exists" in result.stderr
    assert "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit)


@pytest.mark.parametrize("bad", ["30", "d", "0d", "-1d", "1w", "1.5h", "30 days", "abc"])
def test_bad_duration(state: str, bad: str) -> None:
    result = run("create", "--name", "x", "--roles", "r", "--expires", bad, "--state", state)
    assert result.exit_code == 2
    assert "bad duration" in result.stderr
    assert isinstance(result.exception, SystemExit)
    assert "stile_" not in result.stdout
    assert not (Path(state.removeprefix("sqlite:///"))).exists()  # nothing was created


def test_parse_duration() -> None:
    assert parse_duration("30d") == timedelta(days=30)
    assert parse_duration("12h") == timedelta(hours=12)
    assert parse_duration("90m") == timedelta(minutes=90)


def test_bad_state_url_is_a_clear_error() -> None:
    result = run("list", "--state", "mysql://u@h/db")
    assert result.exit_code == 2
    assert "unsupported key store URL" in result.stderr
    assert isinstance(result.exception, SystemExit)


def test_unreachable_state_is_a_clear_error(tmp_path: Path) -> None:
    result = run("list", "--state", f"sqlite:///{tmp_path / 'missing-dir' / 'stile.db'}")
    assert result.exit_code == 1
    assert "cannot use state store" in result.stderr
    assert isinstance(result.exception, SystemExit)


def test_state_errors_hide_the_password() -> None:
    result = run("list", "--state", "postgresql://postgres:sekrit@127.0.0.1:5432/stile_no_such_db")
    assert result.exit_code == 1
    assert "cannot use state store" in result.stderr and "stile_no_such_db" in result.stderr
    assert "sekrit" not in result.output
    assert isinstance(result.exception, SystemExit)


def test_default_state_is_stile_db_in_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("STILE_STATE", raising=False)
    result = run("create", "--name", "here", "--roles", "r")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "stile.db").exists()
    key = result.stdout.rstrip("\n").splitlines()[-1]
    assert verify(f"sqlite:///{tmp_path / 'stile.db'}", key) is not None
