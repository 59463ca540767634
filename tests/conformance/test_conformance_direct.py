"""The official MCP conformance suites against the fixture server addressed directly.

A regression check: every check that is SUCCESS in ``baseline-<suite>.json`` must still be
SUCCESS. Needs Node 22 and the conformance packages (``tools/install-node.sh``); skipped when they
are missing unless ``STILE_REQUIRE_CONFORMANCE=1`` (then it fails instead).

Refresh the baselines with::

    python -m tests.conformance.runner --fixture --suite legacy --write-baseline
    python -m tests.conformance.runner --fixture --suite modern --write-baseline
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conformance.runner import (
    SUITES,
    Suite,
    compare_to_baseline,
    describe,
    improvements,
    load_baseline,
    missing_tools,
    run_suite,
)
from tests.fixtures import fixture_server

pytestmark = pytest.mark.conformance


def require_tools(suite: Suite) -> None:
    reason = missing_tools(suite)
    if reason is not None:  # `make test` and CI install the tools: a missing one is a failure, not a skip
        pytest.fail(reason)


@pytest.mark.parametrize("suite", SUITES)
def test_fixture_direct_matches_baseline(suite: Suite, tmp_path: Path) -> None:
    require_tools(suite)
    baseline = load_baseline(suite)
    with fixture_server() as url:
        results = run_suite(url, suite, tmp_path / suite)

    regressions = compare_to_baseline(results, baseline, out_dir=tmp_path / suite)
    print(f"[{suite}] {describe(results)}")
    for line in improvements(results, baseline):
        print(f"[{suite}] improved (refresh the baseline?): {line}")
    assert not regressions, (
        f"{len(regressions)} {suite} conformance check(s) regressed vs baseline-{suite}.json "
        f"(raw results in {tmp_path / suite}):\n  " + "\n  ".join(regressions)
    )
