"""The method table is the one classification of client messages; the router follows it exactly."""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

import pytest

from stile.config.load import ConfigError, parse_config
from stile.core.context import CallContext
from stile.core.gateway import Gateway
from stile.core.router import Router
from stile.wire import methods
from stile.wire.errors import MethodNotFound


def _gateway(extra: dict[str, Any] | None = None) -> Gateway:
    cfg = parse_config({"upstreams": {"up": {"url": "http://127.0.0.1:9/mcp"}},
                        "virtual_servers": {"vs": {"auth": "none", **(extra or {})}}})
    return Gateway(cfg)


def test_every_classified_method_has_exactly_one_router_handler_and_no_handler_is_unclassified() -> None:
    router = _gateway().router
    assert set(router.handlers) == set(methods.METHODS)


def test_every_router_handler_method_is_reachable_from_the_table() -> None:
    """A handler written on the Router but not wired to a table entry fails here."""
    router = _gateway().router
    wired = {fn.__func__.__name__ for fn in router.handlers.values()}  # type: ignore[attr-defined]
    handlers = {name for name, fn in inspect.getmembers(Router, inspect.iscoroutinefunction)
                if list(inspect.signature(fn).parameters) == ["self", "ctx", "view"]}
    assert handlers - {"_passthrough"} == wired  # _passthrough: the one way for unclassified methods


@pytest.mark.parametrize("method", ["vault/admin_dump", "tasks/get", "tasks/cancel", "sampling/createMessage",
                                    "", "initialize/", "tools/call/"])
@pytest.mark.parametrize("era", ["legacy", "modern"])
def test_a_method_nobody_classified_is_refused_by_the_router(method: str, era: str) -> None:
    router = _gateway().router
    ctx = CallContext("vs", method, {}, 1, era, "x")  # type: ignore[arg-type]
    with pytest.raises(MethodNotFound):
        asyncio.run(router.handle(ctx))


@pytest.mark.parametrize(("method", "era"), [("ping", "modern"), ("initialize", "modern"),
                                              ("server/discover", "legacy"), ("resources/subscribe", "modern"),
                                              ("subscriptions/listen", "legacy")])
def test_a_method_of_the_other_era_is_unclassified_there(method: str, era: str) -> None:
    assert methods.classify(method, era) is None  # type: ignore[arg-type]
    with pytest.raises(MethodNotFound):
        asyncio.run(_gateway().router.handle(CallContext("vs", method, {}, 1, era, "x")))  # type: ignore[arg-type]


def test_pseudo_methods_are_not_client_methods() -> None:
    assert not methods.client_method(methods.GET_STREAM) and not methods.client_method(methods.SSE_STREAM)
    assert methods.client_method("tools/call") and methods.client_method("vault/x")


def test_metric_labels_come_only_from_the_table() -> None:
    assert methods.label("tools/call") == "tools/call"
    assert methods.label("x" * 10_000) == "other"


@pytest.mark.parametrize(("chain", "problem"), [
    (["access", "rules"], "must start with 'observe'"),
    (["observe", "rules"], "must include 'access'"),
    (["observe", "access", "nope"], "unknown policy 'nope'"),
    (["observe", "access", "access"], "appears twice"),
])
def test_a_chain_that_skips_accounting_or_access_control_is_a_config_error(chain: list[str], problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"upstreams": {"up": {"url": "http://127.0.0.1:9/mcp"}},
                      "virtual_servers": {"vs": {"chain": chain}}})
    assert any(problem in p for p in info.value.problems), info.value.problems


def test_passthrough_methods_must_route_to_an_upstream_of_the_virtual_server() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"upstreams": {"up": {"url": "http://127.0.0.1:9/mcp"}, "b": {"url": "http://127.0.0.1:9/b"}},
                      "virtual_servers": {"vs": {"upstreams": ["up"],
                                                 "passthrough_methods": {"x/*": "b", "tools/call": "up"}}}})
    text = "\n".join(info.value.problems)
    assert "upstream 'b' is not one this virtual server draws from" in text
    assert "tools/call is an MCP method Stile handles itself" in text
