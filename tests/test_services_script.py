"""`tools/services.sh` (run by `make test`): services up is fine; a PostgreSQL it cannot reach is named, exit 1."""

from __future__ import annotations

import os
import subprocess

from tests import pg
from tests.support import REPO, free_port

SCRIPT = REPO / "tools" / "services.sh"


def test_with_the_services_up_it_says_so() -> None:
    env = {**os.environ, pg.ENV: pg.DEFAULT_SERVER}
    proc = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "PostgreSQL 127.0.0.1:5432 and Redis 127.0.0.1:6379 are up" in proc.stdout


def test_an_unreachable_postgres_is_named_with_what_to_do() -> None:
    port = free_port()  # nothing listens there
    env = {**os.environ, pg.ENV: f"postgresql://postgres@127.0.0.1:{port}/test"}
    proc = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 1
    assert f"FATAL: PostgreSQL is not reachable at 127.0.0.1:{port}" in proc.stderr
    assert "STILE_TEST_PG_URL" in proc.stderr
