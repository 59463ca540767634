"""Who may read /metrics, decided on a real gateway config (the HTTP behaviour: tests/e2e/test_metrics_exposure)."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import pytest

from stile.assembly import assemble
from stile.config.load import parse_config
from stile.frontends.metrics_access import MetricsAccess
from stile.identity.authn import Authenticator
from stile.stores.keys import hash_for_config
from stile.wire.forwarded import PEER

TOKEN = secrets.token_urlsafe(32)
REMOTE = {PEER: "203.0.113.9"}


def _access(tmp_path: Path, metrics: dict[str, Any]) -> MetricsAccess:
    cfg = parse_config({"upstreams": {}, "virtual_servers": {}, "metrics": metrics, "audit": {"store": False}})
    return MetricsAccess(assemble(cfg), Authenticator(cfg, f"sqlite:///{tmp_path / 'state.db'}"), lambda h: "http://gw")


class Sent:
    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []

    async def __call__(self, message: dict[str, Any]) -> None:
        self.messages.append(message)

    @property
    def status(self) -> int | None:
        return next((m["status"] for m in self.messages if m["type"] == "http.response.start"), None)


async def test_a_remote_client_needs_a_credential(tmp_path: Path) -> None:
    access = _access(tmp_path, {"token": TOKEN})
    sent = Sent()
    assert await access.allow_metrics(REMOTE, sent) is False and sent.status == 401
    assert await access.allow_metrics({**REMOTE, "authorization": f"Bearer {TOKEN}"}, Sent()) is True
    assert await access.allow_metrics({**REMOTE, "authorization": f"bearer  {TOKEN}"}, Sent()) is True
    assert await access.allow_metrics({PEER: "127.0.0.1", "host": "127.0.0.1:8080"}, Sent()) is True
    assert await access.allow_metrics({PEER: "127.0.0.1", "host": "localhost"}, Sent()) is True
    assert await access.may_see_details(REMOTE) is False
    assert await access.may_see_details({PEER: "::1", "host": "[::1]:9"}) is True


@pytest.mark.parametrize("host", ["attacker.example", "attacker.example:8080", "127.0.0.1.attacker.example", ""])
async def test_a_loopback_peer_naming_a_foreign_host_is_not_local(tmp_path: Path, host: str) -> None:
    """Bound to 0.0.0.0 without `allowed_hosts` there is no Host check: DNS rebinding from a local browser."""
    access = _access(tmp_path, {})
    sent = Sent()
    assert await access.allow_metrics({PEER: "127.0.0.1", "host": host}, sent) is False and sent.status == 401
    assert await access.may_see_details({PEER: "127.0.0.1", "host": host}) is False


async def test_a_token_hash_works_like_the_token(tmp_path: Path) -> None:
    access = _access(tmp_path, {"token_hash": hash_for_config(TOKEN)})
    assert await access.allow_metrics({**REMOTE, "authorization": f"Bearer {TOKEN}"}, Sent()) is True
    sent = Sent()
    assert await access.allow_metrics({**REMOTE, "authorization": f"Bearer {TOKEN}x"}, sent) is False
    assert sent.status == 401


async def test_public_metrics_are_served_to_anyone_but_readyz_details_are_not(tmp_path: Path) -> None:
    access = _access(tmp_path, {"public": True})
    assert await access.allow_metrics(REMOTE, Sent()) is True
    assert await access.may_see_details(REMOTE) is False


@pytest.mark.parametrize(("metrics", "needle"), [
    ({"token": "a", "token_hash": None}, "at least 16"),
    ({"token": TOKEN, "token_hash": hash_for_config(TOKEN)}, "at most one"),
    ({"token_hash": "sha256:abc"}, "token_hash"),
    ({"public": "maybe"}, "public"),
])
def test_bad_metrics_config_is_named(metrics: dict[str, Any], needle: str) -> None:
    from tests.config.test_config import problems_of
    problems = problems_of({"upstreams": {}, "virtual_servers": {}, "metrics": metrics})
    assert any(needle in p for p in problems), problems


def test_trusted_proxies_must_be_addresses_or_networks() -> None:
    from tests.config.test_config import problems_of
    [problem] = problems_of({"upstreams": {}, "virtual_servers": {}, "trusted_proxies": ["10.0.0.0/8", "proxy.lan"]})
    assert "trusted_proxies" in problem and "proxy.lan" in problem
    cfg = parse_config({"upstreams": {}, "virtual_servers": {}, "trusted_proxies": ["10.0.0.1", "fd00::/8"]})
    assert cfg.trusted_proxies == ["10.0.0.1", "fd00::/8"]
    assert cfg.limits.max_metric_series == 10_000 and cfg.metrics.public is False


async def test_public_metrics_are_warned_about_by_check_and_at_startup(tmp_path: Path,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    from rich.console import Console

    from stile.cli.check import report
    from stile.server import build_app

    cfg = parse_config({"upstreams": {}, "virtual_servers": {}, "metrics": {"public": True}, "audit": {"store": False}})
    out = Console(record=True, width=200)
    assert await report(cfg, out, offline=True) == []  # a warning, not a problem: exit 0
    assert "metrics.public: true" in out.export_text()
    with caplog.at_level("WARNING", logger="stile"):
        build_app(cfg, state_url=f"sqlite:///{tmp_path / 'state.db'}")
    assert any("metrics.public" in r.getMessage() for r in caplog.records)
