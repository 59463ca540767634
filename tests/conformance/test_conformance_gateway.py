"""The official conformance suite through Stile, against the fixture-direct baseline."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conformance.runner import compare_to_baseline, load_baseline, run_suite
from tests.conformance.test_conformance_direct import require_tools
from tests.fixtures import fixture_server
from tests.support import stile_server

pytestmark = pytest.mark.conformance


@pytest.mark.parametrize("suite", ["legacy", "modern"])
def test_stile_passes_every_check_the_fixture_passes(suite: str, tmp_path: Path) -> None:
    require_tools(suite)  # type: ignore[arg-type]
    with fixture_server() as upstream_url:
        config = {
            "upstreams": {"fixture": {"url": upstream_url}},
            "virtual_servers": {"conf": {"upstreams": ["fixture"], "prefix": "never", "auth": "none"}},
        }
        with stile_server(config) as base:
            results = run_suite(f"{base}/mcp/conf", suite, tmp_path / suite)  # type: ignore[arg-type]
    regressions = compare_to_baseline(results, load_baseline(suite), out_dir=tmp_path / suite, passed_only=True)
    assert not regressions, "conformance regressions through Stile:\n" + "\n".join(regressions)
