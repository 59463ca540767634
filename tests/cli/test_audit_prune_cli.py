"""`stile audit prune`: bad input is exit 2 with one line; a crash between export and delete loses nothing
and duplicates nothing (the process is SIGKILLed at that point and the prune run again)."""

from __future__ import annotations

import asyncio
import gzip
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from stile.cli.main import app
from stile.observe.audit_retention import CRASH_ENV
from stile.observe.audit_store import sealed_text
from stile.vault.keyring import MASTER_ENV, new_key_text
from tests import pg
from tests.observe.test_audit_retention import Store, events
from tests.support import REPO

runner = CliRunner()


@pytest.fixture(params=["sqlite", "postgres"])
def state(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'state.db'}"
        return
    run = os.environ[pg.ENV]
    url = pg.create_run_database(run)
    try:
        yield url
    finally:
        pg.drop_run_database(run, url)


@pytest.mark.parametrize(("args", "message"), [
    ([], "pass exactly one of --config or --state"),
    (["--state", "sqlite:///x.db", "--config", "c.yaml"], "pass exactly one of --config or --state"),
    (["--state", "sqlite:////nonexistent/state.db", "--max-age", "1d"], "no state database"),
])
def test_bad_sources_are_refused(args: list[str], message: str) -> None:
    result = runner.invoke(app, ["audit", "prune", *args])
    assert result.exit_code == 2 and message in result.output


@pytest.mark.parametrize(("args", "message"), [
    ([], "nothing to prune by"),
    (["--max-age", "soon"], "bad age 'soon'"),
    (["--max-age", "0d"], "bad age"),
    (["--max-size", "5 parsecs"], "bad size"),
    (["--max-events", "0"], "--max-events must be at least 1"),
    (["--max-events", "5", "--batch", "1"], "--batch must be between"),
])
def test_bad_limits_are_refused(tmp_path: Path, args: list[str], message: str) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    asyncio.run(Store(url).write("c", [events(3)]))
    result = runner.invoke(app, ["audit", "prune", "--state", url, *args])
    assert result.exit_code == 2 and message in result.output
    assert "Traceback" not in result.output


def test_without_a_key_nothing_is_pruned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MASTER_ENV, raising=False)
    url = f"sqlite:///{tmp_path / 'state.db'}"
    store = Store(url)
    asyncio.run(store.write("c", [events(20)]))
    result = runner.invoke(app, ["audit", "prune", "--state", url, "--max-events", "5"])
    assert result.exit_code == 2 and "no key to sign checkpoints with" in result.output
    assert asyncio.run(store.count()) == 20


def _prune(url: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "stile", "audit", "prune", "--state", url, *args],
                          env={**os.environ, **env}, cwd=REPO, capture_output=True, timeout=120, check=False)


def test_a_crash_between_export_and_delete_loses_and_duplicates_nothing(state: str, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store(state)
    asyncio.run(store.write("c", [events(50)]))
    stored = asyncio.run(store.sql("SELECT seq, event, hash FROM stile_audit_events ORDER BY seq"))
    export = tmp_path / "export"
    key = {MASTER_ENV: new_key_text()}  # the vault signs (no config: no spool directory key file)
    crashed = _prune(state, "--max-events", "10", "--batch", "15", "--export", str(export),
                     env={**key, CRASH_ENV: "after-export"})
    assert crashed.returncode == -9, crashed.stderr.decode()
    assert [p.name for p in (export / "c").glob("*.gz")] == ["000000000001-000000000015.jsonl.gz"]
    assert asyncio.run(store.count()) == 50  # nothing deleted: the batch was exported, not committed
    done = _prune(state, "--max-events", "10", "--batch", "20", "--export", str(export), "--json", env=key)
    assert done.returncode == 0, done.stderr.decode()
    report = orjson.loads(done.stdout)
    assert report["pruned"] == 40 and report["chains"]["c"]["checkpoint"] == 40
    files = sorted((export / "c").glob("*.gz"))  # the crashed attempt's file was replaced, not kept beside
    assert [f.name for f in files] == ["000000000001-000000000020.jsonl.gz", "000000000021-000000000040.jsonl.gz"]
    lines = [line for f in files for line in gzip.decompress(f.read_bytes()).splitlines()]
    # each pruned event exactly once, in order
    assert lines == [sealed_text(r.event, r.hash).encode() for r in stored[:40]]
    assert asyncio.run(store.seqs("c")) == list(range(41, 51))
    monkeypatch.setenv(MASTER_ENV, key[MASTER_ENV])
    result = runner.invoke(app, ["audit", "verify", "--state", state])
    assert result.exit_code == 0 and "chain intact" in result.output, result.output
    monkeypatch.setenv(MASTER_ENV, new_key_text())  # another master key cannot read the checkpoint key
    result = runner.invoke(app, ["audit", "verify", "--state", state])
    assert result.exit_code == 1 and "cannot read" in result.output
