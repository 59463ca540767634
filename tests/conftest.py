"""Session set-up shared by every test: a PostgreSQL database of this run's own (see tests/pg.py)."""

from __future__ import annotations

import os

import asyncpg
import pytest

from tests import pg

_state: dict[str, str] = {}


def pytest_configure(config: pytest.Config) -> None:
    server = pg.server_url()
    try:
        url = pg.create_run_database(server)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        _state["problem"] = (f"PostgreSQL at {server} is not usable ({exc}): the store tests will fail. "
                             "`make test` starts the machine's PostgreSQL (tools/services.sh); or set "
                             f"{pg.ENV} to a server where this user may CREATE DATABASE")
        return
    _state.update(server=server, url=url)
    os.environ[pg.ENV] = url  # read at import by the test modules, which are imported after this


def pytest_report_header(config: pytest.Config) -> str:
    return _state.get("problem") or f"PostgreSQL: this run's own database {_state['url']}"


def pytest_unconfigure(config: pytest.Config) -> None:
    if "url" in _state:
        pg.drop_run_database(_state["server"], _state["url"])
        os.environ[pg.ENV] = _state["server"]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if "problem" in _state:  # repeated at the end: `-q` (as `make test` runs) hides the header
        terminalreporter.write_line(_state["problem"], red=True)
