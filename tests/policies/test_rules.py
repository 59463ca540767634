"""CEL rules: compile errors name the rule; the tool-name fast path decides exactly as CEL would."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from stile.config.identity import RuleConfig
from stile.policies.rules import RuleError, compile_rules, decide

RULES = [
    RuleConfig(name="deny-closed", deny='tool.name == "crm.update_ticket" && !(arguments.status in ["open"])'),
    RuleConfig(name="allow-only-small", allow='tool.name == "warehouse.query" && arguments.limit < 100'),
    RuleConfig(name="no-guard", deny='arguments.text == "forbidden"'),
]
CASES: list[tuple[str, dict[str, Any]]] = [
    ("crm.update_ticket", {"status": "closed"}), ("crm.update_ticket", {"status": "open"}),
    ("crm.update_ticket", {}), ("warehouse.query", {"limit": 5}), ("warehouse.query", {"limit": 500}),
    ("other.tool", {"text": "forbidden"}), ("other.tool", {"text": "fine"}), ("other.tool", {}),
]


def _data(tool: str, args: dict[str, Any]) -> dict[str, Any]:
    return {"principal": {"roles": []}, "tool": {"name": tool, "upstream": tool.split(".")[0]},
            "arguments": args, "request": {"method": "tools/call"}}


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.name)
@pytest.mark.parametrize(("tool", "args"), CASES)
def test_the_tool_name_fast_path_agrees_with_cel(rule: RuleConfig, tool: str, args: dict[str, Any]) -> None:
    (compiled,) = compile_rules([rule])
    slow = replace(compiled, tool_guard=None)
    assert decide([compiled], _data(tool, args)).allowed == decide([slow], _data(tool, args)).allowed


def test_only_a_leading_literal_tool_comparison_is_a_guard() -> None:
    guards = [c.tool_guard for c in compile_rules(RULES)]
    assert guards == ["crm.update_ticket", "warehouse.query", None]


@pytest.mark.parametrize(("text", "guard"), [
    ('"a.b" == tool.name && arguments.x == 1', "a.b"), ('arguments.x == 1 && tool.name == "a.b"', "a.b"),
    ('(arguments.x == 1 && (tool.name == "a.b")) && arguments.y', "a.b"), ('tool.name == "a\\"b" && true', 'a"b'),
    ('tool.name == "a.b" && arguments.x || arguments.y', None), ('tool.name == "a.b" ? true : false', None),
    ('tool.name == "a.b" && arguments.x ? true : false', None), ('!(tool.name == "a.b") && true', None),
    ('tool.name != "a.b" && true', None), ('tool.upstream == "a" && true', None), ('tool.name == 1 && true', None),
    ('tool.name == "a.b" || tool.name == "c.d"', None), ('(tool.name == "a.b" || true) && true', None),
    ('[tool.name == "a.b" && true][0]', None), ('r"x" == "x" && tool.name == "a.b"', None),  # not parsed: CEL
])
def test_the_guard_is_a_top_level_conjunct_of_the_parsed_expression(text: str, guard: str | None) -> None:
    (compiled,) = compile_rules([RuleConfig(name="g", deny=text)])
    assert compiled.tool_guard == guard


@pytest.mark.parametrize(("text", "args", "denied"), [
    ('tool.name == "x.y" && arguments.missing == 1', {}, False),  # false && error is false, as CEL says
    ('arguments.missing == 1 && tool.name == "x.y"', {}, False),
    # values CEL cannot represent: the guard leaves them to CEL, which converts lazily and decides by order
    ('tool.name == "x.y" && arguments.n == 1', {"n": 2**64}, False),
    ('arguments.n == 1 && tool.name == "x.y"', {"n": 2**64}, False),  # an error value: false && error
    ('tool.name == "x.y" && arguments.n == 1', {"s": "\ud800"}, False),
    ('arguments.n == 1 && tool.name == "x.y"', {"s": "\ud800"}, True),  # converting it aborts the evaluation
    ('tool.name == "x.y" && arguments.n.matches("a")', {"n": 2**63}, False),
])
def test_the_guard_decides_a_deny_rule_for_another_tool_exactly_as_cel(
        text: str, args: dict[str, Any], denied: bool) -> None:
    (compiled,) = compile_rules([RuleConfig(name="g", deny=text)])
    assert compiled.tool_guard == "x.y"
    slow = replace(compiled, tool_guard=None, fast=None)
    assert decide([compiled], _data("other.tool", args)).allowed is not denied
    assert decide([slow], _data("other.tool", args)).allowed is not denied


def test_a_rule_that_does_not_compile_is_named_with_its_position() -> None:
    with pytest.raises(RuleError, match=r"rules\[0\] \(broken\)"):
        compile_rules([RuleConfig(name="broken", deny="tool.name ==")])


def test_an_erroring_expression_fails_closed() -> None:
    (compiled,) = compile_rules([RULES[0]])
    decision = decide([compiled], _data("crm.update_ticket", {}))  # arguments.status is missing
    assert not decision.allowed and decision.rule == "deny-closed"


FAST_RULES = [*RULES, RuleConfig(name="bench", deny='has(arguments.text) && arguments.text == "forbidden"'),
              RuleConfig(name="roles", allow='"admin" in principal.roles || !has(arguments.status)')]


def test_rules_in_the_subset_skip_cel_and_the_others_keep_it() -> None:
    compiled = compile_rules([*FAST_RULES, RuleConfig(name="regex", deny='arguments.text.matches("^f")'),
                              RuleConfig(name="arith", allow="arguments.limit + 1 < 100")])
    assert [c.fast is not None for c in compiled] == [True] * len(FAST_RULES) + [False, False]


@pytest.mark.parametrize("rule", FAST_RULES, ids=lambda r: r.name)
@pytest.mark.parametrize(("tool", "args"), [*CASES, ("other.tool", {"text": ("a", "tuple")}), ("x.y", {"text": 2**64})])
def test_the_cel_subset_fast_path_decides_as_cel(rule: RuleConfig, tool: str, args: dict[str, Any]) -> None:
    (compiled,) = compile_rules([rule])
    slow = replace(compiled, tool_guard=None, fast=None)
    assert decide([compiled], _data(tool, args)) == decide([slow], _data(tool, args))


# A rule that starts with `tool.name == "X" &&` but whose top-level operator is `||`: the tool comparison is no
# guard. A deny rule of that shape must still deny blocked-bot on every tool; an allow rule must allow it.
OR_RULE = 'tool.name == "vault.add_note" && arguments.title == "zzz" || principal.agent == "blocked-bot"'


def _agent_data(agent: str, tool: str, args: dict[str, Any]) -> dict[str, Any]:
    return {"principal": {"agent": agent, "roles": []}, "tool": {"name": tool, "upstream": tool.split(".")[0]},
            "arguments": args, "request": {"method": "tools/call"}}


@pytest.mark.parametrize(("agent", "tool", "args", "denied"), [
    ("blocked-bot", "crm.search", {}, True), ("blocked-bot", "vault.add_note", {"title": "a"}, True),
    ("good-bot", "crm.search", {}, False), ("good-bot", "vault.add_note", {"title": "zzz"}, True),
    ("good-bot", "vault.add_note", {"title": "a"}, False)])
def test_a_deny_rule_whose_top_level_operator_is_or_denies_every_tool(
        agent: str, tool: str, args: dict[str, Any], denied: bool) -> None:
    rules = compile_rules([RuleConfig(name="block", deny=OR_RULE)])
    decision = decide(rules, _agent_data(agent, tool, args))
    assert decision.allowed is not denied and (decision.rule == "block") is denied


@pytest.mark.parametrize(("agent", "tool", "args", "allowed"), [
    ("blocked-bot", "crm.search", {}, True), ("good-bot", "crm.search", {}, False),
    ("good-bot", "vault.add_note", {"title": "zzz"}, True), ("good-bot", "vault.add_note", {"title": "a"}, False)])
def test_an_allow_rule_whose_top_level_operator_is_or_allows_what_it_says(
        agent: str, tool: str, args: dict[str, Any], allowed: bool) -> None:
    rules = compile_rules([RuleConfig(name="only", allow=OR_RULE)])
    assert decide(rules, _agent_data(agent, tool, args)).allowed is allowed
