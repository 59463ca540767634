"""cel_fast decides exactly as CEL (cel-expr-python) does: true, false or error, on tables and on random input."""

from __future__ import annotations

import math
import random
import re
from dataclasses import replace
from typing import Any

import pytest
from cel_expr_python import cel
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from bench.cel_fuzz import Disagreement, check, data, render, rule_expression, shrink
from stile.config.identity import RuleConfig
from stile.policies.cel_fast import VARIABLES, NeedsCel, cel_equal, compile_fast
from stile.policies.rules import compile_rules, decide

_ENV = cel.NewEnv(variables={v: cel.Type.DYN for v in VARIABLES})
Outcome = bool | None  # None: an error or a non-boolean


def _used(text: str) -> tuple[str, ...]:
    return tuple(v for v in VARIABLES if re.search(rf"\b{v}\b", text))


def _data(args: Any) -> dict[str, Any]:
    return {"principal": {"agent": "bot", "roles": ["reader", "ops"], "claims": {"sub": "u1", "n": 3}},
            "tool": {"upstream": "crm", "name": "crm.search", "exposed": None, "annotations": {}},
            "arguments": args, "request": {"virtual_server": "main", "method": "tools/call", "time": 1700000000}}


def cel_outcome(text: str, data: dict[str, Any]) -> Outcome:
    program = _ENV.compile(text)
    try:
        value = program.eval(data={k: data[k] for k in _used(text)})
    except RuntimeError:
        return None
    return bool(value.value()) if value.type() == cel.Type.BOOL else None


def fast_outcome(text: str, data: dict[str, Any]) -> Outcome:
    program = compile_fast(text, _used(text))
    assert program is not None, f"not in the subset: {text}"
    try:
        return program(data)
    except NeedsCel:
        return cel_outcome(text, data)


EXPRESSIONS = [
    'has(arguments.text) && arguments.text == "forbidden"', 'arguments.text == "forbidden"',
    "arguments.n < 10", "arguments.n <= 10.5", "arguments.n > -3", "arguments.n >= 1e1", "arguments.n == 1",
    "arguments.n != 1.0", 'arguments.n == "1"', "arguments.n == true", "arguments.n == null", "arguments.n < true",
    'arguments.n < "a"', '!(arguments.status in ["open", "pending"])', '"ops" in principal.roles',
    '"admin" in principal.roles || arguments.n < 5', "arguments.n < 5 || arguments.missing",
    "arguments.missing || arguments.n < 5", "arguments.missing && false", "false && arguments.missing",
    "true && arguments.missing", "arguments.missing || true", "arguments.n && false", "!arguments.n",
    "!!arguments.b", "!!arguments.text",
    "!!!arguments.n", "!(!arguments.n)", "arguments.b", "arguments.text",
    'arguments["text"] == "hi"', 'arguments["a-b"] == 1',
    "has(arguments.nested.x)", "has(arguments.missing.x)", "has(arguments.text.x)", "arguments.nested.x == 1",
    'arguments.nested["x"] > 0', "size(arguments.text) == 2", "arguments.text.size() > 1", "size(arguments.list) == 3",
    "size(arguments.nested) == 1", "size(arguments.n) == 1", 'arguments.text.startsWith("h")',
    'arguments.text.endsWith("i")', 'arguments.text.contains("")', "arguments.text.contains(arguments.n)",
    'arguments.n.startsWith("1")', 'tool.name == "crm.search" && arguments.n < 100', 'tool.name.startsWith("crm.")',
    'request.method == "tools/call"', "request.time > 1600000000", 'principal.claims.sub == "u1"',
    "principal.claims.n == 3.0", "arguments.list == [1, 2.0, 3]", "arguments.list == [1, 2, 3,]",
    "1 in arguments.list", '"text" in arguments', "1 in arguments", "null in arguments", "arguments.list in arguments",
    '"h" in arguments.text', "arguments.nested == arguments.nested", "[arguments.missing] == []",
    "arguments.f == arguments.f", "arguments.f != arguments.f", "arguments.f < 1", "arguments.big == 9007199254740993",
    "arguments.big < 9007199254740993", "arguments.n == 9223372036854775807", "-9223372036854775808 < arguments.n",
    '"a\\"b\\n" == arguments.esc', "'it\\'s' == arguments.esc", 'arguments.text < "hj"', 'arguments.text >= "é"',
    "1 == 1 == true", '"a" in ["a"] == true', "(arguments.n < 5) == (arguments.n <= 4)", "false < true", "[]",
    "arguments.n", "null == null", "arguments.list[0] == 1", "arguments.n + 1 == 4",
    # index access, the conditional and map literals
    "arguments.list[2] == 3", "arguments.list[3] == 3", "arguments.list[-1] == 3", "arguments.list[1.0] == 2",
    "arguments.list[arguments.n] == 1", 'arguments.list["a"] == 1', "arguments.list[true] == 1",
    'arguments["nested"]["x"] == 1', "arguments.nested[arguments.text] == 1", "arguments.text[0] == 1",
    "arguments.n > 1 ? true : false", "arguments.b ? arguments.n > 1 : arguments.missing",
    "arguments.n ? true : false", "arguments.missing ? true : false", "true ? arguments.b : arguments.missing",
    "false ? arguments.missing : arguments.b", 'arguments.n < 5 && arguments.b ? true : arguments.text == "hi"',
    '{"x": arguments.n}.x == 3', '{"x": 1, "y": arguments.missing}.x == 1', '"x" in {"x": 1}',
    '{"x": 1, "x": 2}.x == 1', "{1: 2}[1] == 2", "{}.size() == 0", '[1, 2][arguments.n] == 2',
]
INPUTS: list[Any] = [
    {}, {"text": "forbidden"}, {"text": "hi", "n": 3, "b": True, "list": [1, 2, 3], "nested": {"x": 1}},
    {"text": 5, "n": "3", "b": 1, "list": "abc", "nested": [1]}, {"n": 3.5, "status": "open", "esc": 'a"b\n'},
    {"n": True, "status": "closed", "esc": "it's", "text": "é"}, {"n": None, "f": math.nan, "big": 9007199254740992.0},
    {"n": 2**63 - 1, "f": math.inf, "nested": {}, "list": []}, {"n": -(2**63), "text": "héllo😀"},
    {"n": 2**63, "text": "forbidden"}, {"text": "forbidden", "other": (1, 2)}, {"text": "\ud800"},
    {"text": "forbidden", 1: 2}, {"text": b"forbidden"},
]


def test_the_table_is_in_the_subset_except_arithmetic_and_maps_that_may_error() -> None:
    outside = [e for e in EXPRESSIONS if compile_fast(e, _used(e)) is None]
    assert outside == ["arguments.n + 1 == 4", '{"x": 1, "x": 2}.x == 1', "{1: 2}[1] == 2"]


@pytest.mark.parametrize("text", [e for e in EXPRESSIONS if compile_fast(e, _used(e)) is not None])
def test_the_fast_path_agrees_with_cel_on_the_table(text: str) -> None:
    for args in INPUTS:
        data = _data(args)
        assert fast_outcome(text, data) == cel_outcome(text, data), (text, args)


@pytest.mark.parametrize("text", EXPRESSIONS)
def test_rules_decide_as_cel_on_the_table(text: str) -> None:
    for args in INPUTS:
        assert check(text, [_data(args)]) is None


@pytest.mark.parametrize("args", [{"n": 2**63}, {"o": (1, 2)}, {"s": "\ud800"}, {1: 2}, {"b": b"x"}, {"o": {"x": 1j}}])
def test_values_outside_plain_json_are_left_to_cel(args: dict[Any, Any]) -> None:
    program = compile_fast("arguments.n == 1", ("arguments",))
    assert program is not None
    with pytest.raises(NeedsCel):
        program(_data(args))


@pytest.mark.parametrize("text", [
    "arguments.n + 1 == 2", "arguments.n == 1u", "arguments.n == 0x1F", "{1: 2}.size() == 1",
    'arguments.text.matches("a.*")', 'r"a" == arguments.t', '"\\x41" == arguments.t', "arguments.n == 01",
    '{"a": 1, "a": 2}.size() == 1', "principal.roles.exists(r, r == 'a')", "has(arguments)", 'has(arguments["x"])',
    "int(arguments.n) == 1", "-arguments.n < 0", "other.x == 1", 'b"x" == arguments.t', "arguments.n == 1 // note",
    "9223372036854775808 == arguments.n", '"""a""" == arguments.t', "arguments.n < 1e999",
    "(" * 2000 + "true" + ")" * 2000,
])
def test_constructs_outside_the_subset_are_left_to_cel(text: str) -> None:
    assert compile_fast(text, _used(text)) is None


def test_equality_is_heterogeneous_and_numeric_across_int_and_double() -> None:
    assert cel_equal(1, 1.0) and cel_equal([1, {"a": 2}], [1.0, {"a": 2.0}])
    assert not cel_equal(True, 1) and not cel_equal(0, False) and not cel_equal(None, 0) and not cel_equal("1", 1)
    assert not cel_equal([math.nan], [math.nan]) and not cel_equal({"a": 1}, {"b": 1})


# --- random expressions and inputs -----------------------------------------------------------------------------

KEYS = ["a", "b", "c"]
_ints = st.one_of(st.integers(-5, 5), st.sampled_from([2**53, 2**53 + 1, 2**63 - 1, -(2**63), 10**15]))
_floats = st.one_of(st.floats(-10, 10, width=32), st.sampled_from([math.nan, math.inf, -0.0, 2.0**53, 9.2e18]))
_texts = st.text(alphabet=st.sampled_from(["a", "b", "é", "😀", '"', "\\", "\n", " "]), max_size=4)
_scalars = st.one_of(st.none(), st.booleans(), _ints, _floats, _texts)
_values = st.recursive(_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(KEYS), inner, max_size=3)), max_leaves=8)
_arguments = st.dictionaries(st.sampled_from(KEYS), st.one_of(_scalars, _values), min_size=2, max_size=3)


def _string_literal(s: str) -> str:
    body = s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{body}"'


def _number_literal(x: int | float) -> str:
    return repr(x) if not isinstance(x, float) or math.isfinite(x) else "1.5"


_paths = st.builds(lambda parts, form: "arguments" + "".join(
    f'["{k}"]' if form and i == 0 else f".{k}" for i, k in enumerate(parts)),
    st.lists(st.sampled_from(KEYS), min_size=1, max_size=2), st.booleans())
_literals = st.one_of(st.sampled_from(["true", "false", "null", "[]", "tool.name", "principal.roles"]),
                      _ints.map(_number_literal), _floats.map(_number_literal), _texts.map(_string_literal))
_relops = st.sampled_from(["==", "!=", "<", "<=", ">", ">=", "in"])


def _compound(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        inner.map(lambda x: f"!{x}" if x[0] in "(!" or x[0].isalpha() else f"!({x})"),
        inner.map(lambda x: f"({x})"),
        st.tuples(inner, st.sampled_from(["&&", "||"]), inner).map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
        st.tuples(inner, _relops, inner).map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
        inner.map(lambda x: f"size({x})"),
        inner.map(lambda x: f"({x}).size()"),
        st.tuples(inner, st.sampled_from(["startsWith", "endsWith", "contains"]), inner).map(
            lambda t: f"({t[0]}).{t[1]}({t[2]})"),
        _paths.filter(lambda p: not p.endswith("]")).map(lambda p: f"has({p})"),
        st.lists(inner, max_size=3).map(lambda xs: "[" + ", ".join(xs) + "]"),
    )


_atoms = st.one_of(_paths, _paths, _literals)
# boolean-valued shapes (a path against a literal), so that many cases end true or false rather than in an error
_tests = st.one_of(
    st.tuples(_paths, _relops, _literals).map(lambda t: f"{t[0]} {t[1]} {t[2]}"),
    st.tuples(_literals, _relops, _paths).map(lambda t: f"{t[0]} {t[1]} {t[2]}"),
    st.tuples(_paths, _relops, _paths).map(lambda t: f"{t[0]} {t[1]} {t[2]}"),
    _paths.filter(lambda p: not p.endswith("]")).map(lambda p: f"has({p})"),
    st.tuples(_paths, st.sampled_from(["startsWith", "endsWith", "contains"]), _texts.map(_string_literal)).map(
        lambda t: f"{t[0]}.{t[1]}({t[2]})"),
    st.tuples(_paths, _relops, _ints.map(_number_literal)).map(lambda t: f"size({t[0]}) {t[1]} {t[2]}"),
)
_conditions = st.recursive(_tests, lambda inner: st.one_of(
    inner.map(lambda x: f"!({x})"),
    st.tuples(inner, st.sampled_from(["&&", "||"]), inner).map(lambda t: f"({t[0]}) {t[1]} ({t[2]})")), max_leaves=5)
_expressions = st.one_of(_conditions, st.recursive(_atoms, _compound, max_leaves=6))


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(text=_expressions, args=_arguments)
def test_random_expressions_decide_as_cel_does(text: str, args: dict[str, Any]) -> None:
    try:
        _ENV.compile(text)
    except RuntimeError:
        assume(False)  # CEL rejects it (e.g. a static type error): no rule is ever built from it
    program = compile_fast(text, _used(text))
    assert program is not None, text
    data = _data(args)
    assert program(data) == cel_outcome(text, data), (text, args)  # plain JSON input: never NeedsCel


def _rule_decisions(rule: RuleConfig, args: dict[str, Any]) -> tuple[bool, bool]:
    (compiled,) = compile_rules([rule])
    assert compiled.fast is not None
    data = _data(args)
    return decide([compiled], data).allowed, decide([replace(compiled, fast=None)], data).allowed


@settings(max_examples=500, deadline=None)
@given(text=_expressions, args=_arguments, deny=st.booleans())
def test_rules_decide_the_same_with_and_without_the_fast_path(text: str, args: dict[str, Any], deny: bool) -> None:
    try:
        _ENV.compile(text)
    except RuntimeError:
        assume(False)
    rule = RuleConfig(name="r", deny=text) if deny else RuleConfig(name="r", allow=text)
    fast, slow = _rule_decisions(rule, args)
    assert fast == slow, (text, args)


# --- generated rules against CEL, through decide() (tool guard + fast path + CEL fallback) -----------------------
# The generator is bench/cel_fuzz.py's (`python -m bench fuzz-cel` runs it for millions of cases), from a seed
# hypothesis draws (hypothesis' own random draws cost ~0.5 ms each); a disagreement is shrunk by the bench's
# shrinker to a small expression and input in the failure message.

@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**64 - 1))
def test_generated_rules_decide_exactly_as_cel(seed: int) -> None:
    rnd = random.Random(seed)
    tree = rule_expression(rnd)
    result = check(render(tree), [data(rnd) for _ in range(8)])
    if isinstance(result, Disagreement):
        small, d = shrink(tree, result.data)
        pytest.fail(f"{result.detail}\n  minimal: {render(small)}\n  data: {d!r}\n  generated: {result.text}")
