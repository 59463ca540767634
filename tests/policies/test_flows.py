"""Toxic-flow rules in-process: labels (config, globs, annotations), the history's bounds and keys, config errors."""

from __future__ import annotations

from typing import Any

import pytest

from stile.config.model import GatewayConfig
from stile.core.catalog import Inventory, View, build_view
from stile.core.context import CallContext, Principal, Reply
from stile.policies.flows import SESSION_HINT, FlowDenied, Flows, FlowsConfig, History, history_key
from stile.policies.registry import check_chains
from tests.policies.views import StaticViews

TOOLS = [{"name": "read", "inputSchema": {"type": "object"}},
         {"name": "fetch", "inputSchema": {"type": "object"}, "annotations": {"openWorldHint": True}},
         {"name": "send", "inputSchema": {"type": "object"}},
         {"name": "wipe", "inputSchema": {"type": "object"}, "annotations": {"destructiveHint": True}},
         {"name": "plain", "inputSchema": {"type": "object"}}]
TRIFECTA = {"name": "trifecta",
            "deny_when": {"call_has": ["egress"], "seen_all": ["reads_private", "untrusted_content"]},
            "reason": "no egress after private + untrusted"}



def _flows(**cfg: Any) -> tuple[Flows, View]:
    gw = GatewayConfig.model_validate({"upstreams": {"up": {"url": "http://127.0.0.1:1/mcp"}},
                                       "virtual_servers": {"vs": {"upstreams": ["up"], "prefix": "never"}}})
    view = build_view("vs", gw.virtual_servers["vs"], gw, {"up": Inventory(tools=TOOLS, ok=True)})
    base: dict[str, Any] = {"labels": {"up.read": ["reads_private"], "up.se*": ["egress"]}, "flows": [TRIFECTA]}
    return Flows(FlowsConfig.model_validate({**base, **cfg}), StaticViews(view)), view


async def _ok(ctx: CallContext) -> Reply:
    return {"result": {"content": []}}


def _call(name: str, session: str | None = "s1", hint: str | None = None, agent: str = "a") -> CallContext:
    params: dict[str, Any] = {"name": name, "arguments": {}}
    if hint is not None:
        params["_meta"] = {SESSION_HINT: hint}
    return CallContext("vs", "tools/call", params, 1, "legacy" if session else "modern", "2025-11-25",
                       principal=Principal(agent=agent, method="api_key"), session_id=session)


def test_labels_come_from_config_globs_and_annotations() -> None:
    flows, view = _flows()
    assert flows.labels_of(view.tool_index["read"]) == {"reads_private"}
    assert flows.labels_of(view.tool_index["send"]) == {"egress"}
    assert flows.labels_of(view.tool_index["fetch"]) == {"untrusted_content"}
    assert flows.labels_of(view.tool_index["wipe"]) == {"destructive"}
    assert flows.labels_of(view.tool_index["plain"]) == frozenset()
    off, view = _flows(derive_from_annotations=False)
    assert off.labels_of(view.tool_index["fetch"]) == frozenset()


async def test_the_trifecta_is_refused_in_that_order_only() -> None:
    flows, _ = _flows()
    for name in ("read", "fetch"):
        await flows(_call(name), _ok)
    with pytest.raises(FlowDenied) as err:
        await flows(_call("send"), _ok)
    assert err.value.jsonrpc_code == -32010 and err.value.http_status == 200
    assert err.value.data == {"rule": "flow:trifecta", "flow": "trifecta"}
    with pytest.raises(FlowDenied):  # a denied call added nothing, and the history still holds
        await flows(_call("send"), _ok)
    for name in ("send", "fetch", "read"):  # another session, egress first: allowed
        await flows(_call(name, session="s2"), _ok)
    for name in ("fetch", "send"):  # no private read: allowed
        await flows(_call(name, session="s3"), _ok)


async def test_modern_histories_are_per_principal_and_conversation_hint() -> None:
    flows, _ = _flows()
    await flows(_call("read", session=None, hint="c1"), _ok)
    await flows(_call("fetch", session=None, hint="c1"), _ok)
    await flows(_call("send", session=None, hint="c2"), _ok)  # another conversation
    await flows(_call("send", session=None, hint="c1", agent="b"), _ok)  # another principal
    with pytest.raises(FlowDenied):
        await flows(_call("send", session=None, hint="c1"), _ok)
    assert history_key(_call("x", session=None)) != history_key(_call("x", session=None, hint="c1"))
    long = history_key(_call("x", session=None, hint="h" * 10_000))
    assert len(long[-1]) == 128


async def test_a_flow_limited_to_other_virtual_servers_does_not_apply() -> None:
    flows, _ = _flows(flows=[{**TRIFECTA, "virtual_servers": ["elsewhere"]}])
    for name in ("read", "fetch", "send"):
        await flows(_call(name), _ok)


async def test_seen_any_and_no_flows_configured() -> None:
    flows, _ = _flows(flows=[{"name": "after-untrusted", "deny_when": {"call_has": ["destructive"],
                                                                       "seen_any": ["untrusted_content", "x"]}}])
    await flows(_call("wipe"), _ok)
    await flows(_call("fetch"), _ok)
    with pytest.raises(FlowDenied, match="forbidden data flow"):
        await flows(_call("wipe"), _ok)
    idle, _ = _flows(flows=[])
    assert not idle.enabled


def test_the_history_is_bounded_and_expires() -> None:
    h = History(max_sessions=2, max_labels=2, window_s=10)
    h.add(("a",), frozenset({"x"}), 0)
    h.add(("b",), frozenset({"y"}), 1)
    h.add(("a",), frozenset({"z"}), 2)  # a is the most recently used now
    h.add(("c",), frozenset({"w"}), 3)  # evicts b
    assert len(h) == 2 and h.seen(("b",), 3) == set()
    assert h.seen(("a",), 3) == {"x", "z"}
    h.add(("a",), frozenset({"q", "r"}), 4)
    assert len(h.seen(("a",), 4)) == 2  # at most max_labels
    assert h.seen(("a",), 15) == set()  # expired 10 s after its last call
    h.add(("a",), frozenset({"n"}), 15)
    assert h.seen(("a",), 15) == {"n"}


def test_bad_flow_config_is_reported_per_key() -> None:
    cfg = GatewayConfig.model_validate({
        "upstreams": {"up": {"url": "http://127.0.0.1:1/mcp"}}, "virtual_servers": {"vs": {}},
        "policies": {"flows": {"flows": [{"name": "f", "deny_when": {"call_has": ["egress"]}},
                                         {"name": "g", "deny_when": {"call_has": [], "seen_all": ["x"]}}],
                               "window_s": 0, "colour": "red"}}})
    problems = check_chains(cfg, "stile.yaml")
    assert any("policies.flows.flows.0.deny_when" in p and "seen_all or seen_any" in p for p in problems), problems
    assert any("policies.flows.flows.1.deny_when.call_has" in p for p in problems), problems
    assert any("policies.flows.window_s" in p for p in problems), problems
    assert any("policies.flows.colour" in p for p in problems), problems


async def test_a_cel_flow_sees_the_history_and_the_tool_and_fails_closed() -> None:
    expr = '"egress" in tool.labels && "reads_private" in session.labels_seen && tool.name == "up.send"'
    flows, _ = _flows(flows=[{"name": "cel-trifecta", "deny_when": {"cel": expr}, "reason": "by CEL"}])
    await flows(_call("send"), _ok)  # nothing private seen yet
    await flows(_call("read"), _ok)
    with pytest.raises(FlowDenied, match="by CEL") as err:
        await flows(_call("send"), _ok)
    assert err.value.data == {"rule": "flow:cel-trifecta", "flow": "cel-trifecta"}
    broken, _ = _flows(flows=[{"name": "err", "deny_when": {"cel": "session.nope.x == 1"}}])
    with pytest.raises(FlowDenied):  # an evaluation error denies
        await broken(_call("read"), _ok)
    number, _ = _flows(flows=[{"name": "num", "deny_when": {"cel": "1 + 1"}}])
    with pytest.raises(FlowDenied):  # so does a non-boolean
        await number(_call("read"), _ok)


def test_a_cel_flow_that_does_not_compile_or_mixes_forms_is_a_config_error() -> None:
    for deny_when, msg in (({"cel": "session.labels_seen.exists("}, "cel:"),
                           ({"cel": "true", "call_has": ["egress"]}, "not both"), ({"seen_all": ["x"]}, "call_has")):
        with pytest.raises(ValueError, match=msg):
            FlowsConfig.model_validate({"flows": [{"name": "f", "deny_when": deny_when}]})
