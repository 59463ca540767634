"""Config for observability: audit sinks and argument modes, tracing, admin, costs."""

from __future__ import annotations

from typing import Any

import pytest

from stile.config.load import parse_config
from stile.observe.audit import CostTable
from tests.config.test_config import base, problems_of


def test_defaults_audit_to_the_state_store_with_redacted_arguments_and_tracing_off() -> None:
    cfg = parse_config(base(), "cfg.yaml")
    assert (cfg.audit.store, cfg.audit.jsonl, cfg.audit.stdout, cfg.audit.arguments) == (True, None, False, "redacted")
    assert cfg.tracing.enabled is False and cfg.admin.roles == ["admin"] and cfg.costs == {}


def test_a_virtual_server_may_record_arguments_its_own_way() -> None:
    cfg = parse_config(base(v={"audit_arguments": "digest"}, w={}), "cfg.yaml")
    assert cfg.virtual_servers["v"].audit_arguments == "digest"
    assert cfg.virtual_servers["w"].audit_arguments is None


def test_an_unknown_argument_mode_lists_the_valid_ones() -> None:
    [problem] = problems_of(base(v={"audit_arguments": "some"}))
    assert "virtual_servers.v.audit_arguments" in problem and "'none', 'digest', 'redacted' or 'full'" in problem


@pytest.mark.parametrize(("costs", "what"), [
    ({"add_note": 1}, "must name `upstream.tool`"),
    ({"github.x": -1}, "must be >= 0"),
    ({"jira.create": 2}, "costs.jira.create: unknown upstream 'jira'"),
])
def test_bad_costs_are_refused_naming_the_key(costs: dict[str, Any], what: str) -> None:
    assert any(what in p for p in problems_of({**base(), "costs": costs}))


def test_the_most_specific_cost_wins_and_unlisted_tools_cost_one() -> None:
    table = CostTable({"github.*": 2, "github.delete_*": 10, "github.delete_repo": 50})
    assert table("github.delete_repo") == 50
    assert table("github.delete_branch") == 10
    assert table("github.list_issues") == 2
    assert table("files.read") == 1


@pytest.mark.parametrize("section", [{"tracing": {"sample_ratio": 2}}, {"admin": {"roles": []}},
                                     {"audit": {"queue_size": 1}}, {"audit": {"sink": "x"}}])
def test_bad_observability_settings_are_refused(section: dict[str, Any]) -> None:
    key = next(iter(section))
    assert any(p.startswith(f"cfg.yaml: {key}") for p in problems_of({**base(), **section}))


def test_retention_limits_are_parsed() -> None:
    cfg = parse_config({**base(), "audit": {"retention": {"max_age": "30d", "max_size": "5GB", "max_events": 10}}},
                       "cfg.yaml")
    retention = cfg.audit.retention
    assert retention is not None and retention.age_seconds == 30 * 86400 and retention.size_bytes == 5 * 10**9
    assert (retention.max_events, retention.interval, retention.batch, retention.export) == (10, 3600.0, 5000, None)
    assert cfg.audit.chain is None  # one chain per writer unless a shared one is configured


@pytest.mark.parametrize(("retention", "what"), [
    ({}, "at least one of max_age, max_size, max_events"),
    ({"max_age": "forever"}, "bad age 'forever'"),
    ({"max_age": "-3d"}, "bad age"),
    ({"max_size": "lots"}, "bad size 'lots'"),
    ({"max_events": 0}, "greater than or equal to 1"),
    ({"max_age": "1d", "interval": 0}, "greater than or equal to 1"),
    ({"max_age": "1d", "batch": 10**9}, "less than or equal to 100000"),
    ({"max_age": "1d", "keep": "all"}, "keep"),
])
def test_bad_retention_is_refused_naming_the_key(retention: dict[str, Any], what: str) -> None:
    problems = problems_of({**base(), "audit": {"retention": retention}})
    assert any(p.startswith("cfg.yaml: audit.retention") and what in p for p in problems), problems


def test_a_relative_export_directory_is_beside_the_config(tmp_path: Any) -> None:
    import yaml

    from stile.config.load import load_config

    path = tmp_path / "stile.yaml"
    path.write_text(yaml.safe_dump({**base(), "audit": {"retention": {"max_age": "7d", "export": "pruned"}}}))
    retention = load_config(path).config.audit.retention
    assert retention is not None and retention.export == str(tmp_path / "pruned")
