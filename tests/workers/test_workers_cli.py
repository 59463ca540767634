"""`--workers` and `stdio_per_worker`: bad values are clear errors before anything starts."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from stile.cli.main import app
from stile.config.model import UpstreamConfig
from stile.workers.supervisor import MAX_WORKERS, worker_count

CONFIG = "upstreams: {notes: {url: 'http://127.0.0.1:1/mcp'}}\nvirtual_servers: {a: {auth: none}}\n"


def test_worker_count_reads_numbers_and_auto() -> None:
    assert worker_count("1") == 1
    assert worker_count(" 4 ") == 4
    assert worker_count("auto") == worker_count("AUTO") == max(1, min(os.cpu_count() or 1, MAX_WORKERS))


@pytest.mark.parametrize("bad", ["0", "-2", "lots", "", "1.5", str(MAX_WORKERS + 1)])
def test_a_bad_worker_count_is_a_clear_error(tmp_path: Path, bad: str) -> None:
    path = tmp_path / "stile.yaml"
    path.write_text(CONFIG, encoding="utf-8")
    result = CliRunner().invoke(app, ["serve", "--config", str(path), "--port", "1", "--workers", bad])
    assert result.exit_code == 2
    assert "--workers must be" in result.output
    assert "Traceback" not in result.output


def test_stdio_per_worker_is_for_stdio_upstreams() -> None:
    with pytest.raises(ValueError, match="stdio_per_worker"):
        UpstreamConfig(url="http://127.0.0.1:1/mcp", stdio_per_worker=True)
    assert UpstreamConfig(command=["x"], stdio_per_worker=True).stdio_per_worker
