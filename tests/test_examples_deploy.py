"""The deployment examples are real configs: deploy/docker/stile.yaml loads, and everything it makes Stile write
is on the image's data volume (/var/lib/stile), never beside the read-only config mount."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from stile.config.load import load_config
from tests.support import REPO

IMAGE_CONFIG = REPO / "deploy" / "docker" / "stile.yaml"


def test_the_image_config_loads_and_writes_only_on_the_data_volume(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STILE_STATE_URL", raising=False)
    mounted = tmp_path / "etc" / "stile" / "stile.yaml"  # wherever it is mounted, the paths stay put
    mounted.parent.mkdir(parents=True)
    shutil.copy(IMAGE_CONFIG, mounted)
    cfg = load_config(mounted).config
    assert cfg.state == "sqlite:////var/lib/stile/stile.db"
    assert cfg.audit.spool_dir == "/var/lib/stile/audit-spool"
    assert cfg.audit.jsonl is None
    assert set(cfg.virtual_servers) == {"files"} and cfg.upstreams["files"].command
    monkeypatch.setenv("STILE_STATE_URL", "postgresql://stile@postgres:5432/stile")
    assert load_config(mounted).config.state == "postgresql://stile@postgres:5432/stile"
