"""Metrics labels stay within the gateway's vocabulary and every family's series count is capped."""

from __future__ import annotations

from typing import Any, cast

from stile.observe.metrics import KNOWN_METHODS, MAX_LABEL, OVERFLOW, Metrics


def _metrics(max_series: int = 10_000) -> Metrics:
    return Metrics(cast(Any, object()), max_series=max_series)  # the gateway is only read at scrape time


def test_unknown_methods_are_other_and_known_ones_keep_their_name() -> None:
    m = _metrics()
    for i in range(500):
        m.observe("v", f"x/{i}", "", "", "error", 0.001, 0.0)
    m.observe("v", "tools/list", "", "", "ok", 0.001, 0.0)
    assert m.counts == {("v", "other", "", "", "error"): 500, ("v", "tools/list", "", "", "ok"): 1}
    assert set(m.total) == {("v", "other"), ("v", "tools/list")}
    assert {"tools/call", "initialize", "tasks/get", "subscriptions/listen"} <= KNOWN_METHODS


def test_a_full_family_counts_new_label_sets_in_one_overflow_set() -> None:
    m = _metrics(max_series=10)
    for i in range(100):
        m.observe("v", "tools/call", f"tool_{i}", "up", "ok", 0.001, 0.0005)
    assert len(m.counts) == 11
    assert m.counts[(OVERFLOW,) * 5] == 90
    assert m.overflowed == {"stile_requests": 90}
    m.observe("v", "tools/call", "tool_3", "up", "ok", 0.001, 0.0005)  # an existing set still counts as itself
    assert m.counts[("v", "tools/call", "tool_3", "up", "ok")] == 2
    for i in range(50):
        m.denial(f"vs{i}", "PolicyDenied")
    assert len(m.denied) == 11 and m.overflowed["stile_denials"] == 40


def test_long_label_values_are_cut() -> None:
    m = _metrics(max_series=10)
    long_name = "t" * 10_000
    for _ in range(3):
        m.observe("v", "tools/call", long_name, "up", "ok", 0.001, 0.0)
    assert m.counts == {("v", "tools/call", "t" * MAX_LABEL, "up", "ok"): 3}
