"""`governance:` config: defaults, and clear errors for bad values."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from stile.config.governance import GovernanceConfig, parse_ref
from stile.config.model import GatewayConfig


def test_configs_that_do_not_say_flag() -> None:
    assert GatewayConfig().governance.pinning == "flag"
    assert GatewayConfig().governance.pin_poll_seconds == 10.0


def test_refs_name_a_kind_an_upstream_and_a_name() -> None:
    assert parse_ref("github.list_issues") == (None, "github", "list_issues")
    assert parse_ref("prompt:github.triage") == ("prompt", "github", "triage")
    assert parse_ref("template:files.file:///{path}") == ("template", "files", "file:///{path}")
    index = GovernanceConfig(pins={"github.a.b": "sha256:" + "0" * 64}).pin_index()
    assert index == {("tool", "github", "a.b"): "sha256:" + "0" * 64}


@pytest.mark.parametrize(("value", "message"), [
    ({"pinning": "warn"}, "'block', 'flag' or 'off'"),
    ({"pins": {"github.list_issues": "abc"}}, "is not `sha256:` followed by 64 lowercase hex digits"),
    ({"pins": {"list_issues": "sha256:" + "0" * 64}}, "must be `upstream.name`"),
    ({"pin_poll_seconds": 0}, "greater than 0"),
    ({"pinning": "block", "extra": 1}, "Extra inputs are not permitted"),
])
def test_bad_values_are_refused_clearly(value: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message.replace("(", r"\(").replace("'", ".")):
        GatewayConfig.model_validate({"governance": value})
