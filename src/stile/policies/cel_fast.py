"""A small subset of CEL compiled to Python closures, so that common rules skip the CEL runtime.

`compile_tree` compiles an expression parsed by `cel_parse` and returns a program only when every construct
is in the subset, else None and the caller keeps CEL (`compile_fast` parses the text first). Semantics follow
cel-expr-python, checked by tests/policies/test_cel_fast.py (tables, and generated expressions x inputs against
real CEL; `python -m bench fuzz-cel` runs the same comparison for millions of cases). Subset: literals (int,
double, strings with the escapes \\\\ \\" \\' \\n \\r \\t, true, false, null, lists, maps with distinct string
literal keys); the four variables; `a.b` on maps; `a[k]` on maps (string keys) and lists (an int or integral
double index); `has(a.b)`; `==` `!=` (values of different types are unequal; an int and a double compare as
doubles); `<` `<=` `>` `>=` on two numbers, strings or bools; `in` a list or a map's keys; `!` `&&` `||`
(commutative on errors: `error && false` is false); `c ? a : b`; `size`; `startsWith` `endsWith` `contains`.

A program returns True, False, or None for an error or a non-boolean (the caller fails closed). CEL converts
values as it reaches them, and a value it cannot represent makes an error value (an int beyond int64) or aborts
the whole evaluation (a lone surrogate), so the outcome can depend on evaluation order: a program raises
`NeedsCel` when a variable it may read holds anything but plain JSON (int64, double, UTF-8 string, bool, null,
list, string-keyed dict) and the caller asks CEL (`plain` is that check, for callers of `compile_unchecked`).
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

from stile.policies.cel_parse import Node, NotParsed, parse

Data = dict[str, Any]
Fn = Callable[[Data], Any]
Program = Callable[[Data], "bool | None"]

VARIABLES = ("principal", "tool", "arguments", "request")
_INT_MIN, _INT_MAX = -(2**63), 2**63 - 1
_NUM = (int, float)
_ORDERED = (int, float, str, bool)
_STRING_METHODS: dict[str, Callable[[str, str], bool]] = {
    "startsWith": str.startswith, "endsWith": str.endswith, "contains": str.__contains__}


class NeedsCel(Exception):
    """This evaluation must be left to CEL (a value outside plain JSON)."""


class _Error(Exception):
    """A CEL evaluation error (no such key, no matching overload)."""


class _NotInSubset(Exception):
    """The expression uses something outside the subset: the caller keeps CEL."""


def _utf8(s: str) -> bool:
    try:
        s.encode()
    except UnicodeEncodeError:  # a lone surrogate: CEL raises
        return False
    return True


def _plain(value: Any) -> bool:
    """Whether CEL converts `value` without an error, as a value the fast path models exactly."""
    stack = [value]
    while stack:
        v = stack.pop()
        t = type(v)
        if t is dict:
            for k, item in v.items():
                if type(k) is not str or not (k.isascii() or _utf8(k)):
                    return False
                stack.append(item)
        elif t is str:
            if not (v.isascii() or _utf8(v)):
                return False
        elif t is list:
            stack.extend(v)
        elif t is int:
            if not _INT_MIN <= v <= _INT_MAX:
                return False  # a uint for CEL, or out of range
        elif not (t is float or t is bool or v is None):
            return False
    return True


def cel_equal(a: Any, b: Any) -> bool:
    """CEL's heterogeneous equality on plain values."""
    ta, tb = type(a), type(b)
    if ta is tb:
        if ta is list:
            return len(a) == len(b) and all(cel_equal(x, y) for x, y in zip(a, b, strict=True))
        if ta is dict:
            return len(a) == len(b) and all(k in b and cel_equal(v, b[k]) for k, v in a.items())
        return bool(a == b)
    if ta in _NUM and tb in _NUM:
        return float(a) == float(b)
    return False


def _order(a: Any, b: Any) -> tuple[Any, Any]:
    ta, tb = type(a), type(b)
    if ta is tb and ta in _ORDERED:
        return a, b
    if ta in _NUM and tb in _NUM:
        return float(a), float(b)
    raise _Error


def _in(a: Any, c: Any) -> bool:
    tc = type(c)
    if tc is list:
        return any(cel_equal(a, x) for x in c)
    if tc is dict:
        ta = type(a)
        if ta is str:
            return a in c
        if ta in _ORDERED:
            return False  # plain maps have string keys only
    raise _Error


def _size(v: Any) -> int:
    if type(v) in (str, list, dict):
        return len(v)
    raise _Error


def _select(obj: Fn, name: str) -> Fn:
    def select(d: Data) -> Any:
        m = obj(d)
        if type(m) is dict and name in m:
            return m[name]
        raise _Error
    return select


def _has(obj: Fn, name: str) -> Fn:
    def has(d: Data) -> bool:
        m = obj(d)
        if type(m) is dict:
            return name in m
        raise _Error
    return has


def _outcome(f: Fn, d: Data) -> Any:
    try:
        return f(d)
    except _Error:
        return None


def _logic(left: Fn, right: Fn, absorbing: bool) -> Fn:
    """`&&` (absorbing False) or `||` (absorbing True): an error or a non-bool on one side yields to the other."""
    result = absorbing  # mypy narrows `absorbing` to Any below

    def logic(d: Data) -> bool:
        a = _outcome(left, d)
        if a is not absorbing:
            b = _outcome(right, d)
            if b is not absorbing:
                if type(a) is bool and type(b) is bool:
                    return not absorbing
                raise _Error
        return result
    return logic


def _not(operand: Fn) -> Fn:
    def not_(d: Data) -> bool:
        v = operand(d)
        if type(v) is bool:
            return not v
        raise _Error
    return not_


_ORDERINGS: dict[str, Callable[[Any, Any], bool]] = {"<": operator.lt, "<=": operator.le, ">": operator.gt,
                                                     ">=": operator.ge}


def _relation(op: str, left: Fn, right: Fn) -> Fn:
    if op == "==":
        return lambda d: cel_equal(left(d), right(d))
    if op == "!=":
        return lambda d: not cel_equal(left(d), right(d))
    if op == "in":
        return lambda d: _in(left(d), right(d))
    compare = _ORDERINGS[op]
    return lambda d: compare(*_order(left(d), right(d)))


def _string_method(method: Callable[[str, str], bool], target: Fn, arg: Fn) -> Fn:
    def call(d: Data) -> bool:
        s, x = target(d), arg(d)
        if type(s) is str and type(x) is str:
            return method(s, x)
        raise _Error
    return call


def _constant(value: object) -> Fn:
    return lambda d: value


def _list(items: list[Fn]) -> Fn:
    return lambda d: [f(d) for f in items]


def _map(keys: list[str], values: list[Fn]) -> Fn:
    return lambda d: {k: f(d) for k, f in zip(keys, values, strict=True)}


def _index(obj: Fn, key: Fn) -> Fn:
    def index(d: Data) -> Any:
        c, k = obj(d), key(d)
        tc, tk = type(c), type(k)
        if tc is dict:
            if tk is str and k in c:
                return c[k]
            raise _Error  # plain maps have string keys only: any other key is not found (or not a key type)
        if tc is list:
            if tk is float and k.is_integer():  # CEL looks a list up by an integral double too
                k, tk = int(k), int
            if tk is int and 0 <= k < len(c):
                return c[k]
        raise _Error
    return index


def _cond(test: Fn, then: Fn, otherwise: Fn) -> Fn:
    def cond(d: Data) -> Any:
        t = test(d)
        if type(t) is not bool:
            raise _Error
        return then(d) if t else otherwise(d)
    return cond


def _size_of(arg: Fn) -> Fn:
    return lambda d: _size(arg(d))


def _var(name: str) -> Fn:
    return lambda d: d[name]


def _compile(node: Node) -> Fn:  # one case per node kind
    kind, args = node.kind, node.args
    if kind == "const":
        return _constant(node.value)
    if kind == "var":
        if node.value not in VARIABLES:
            raise _NotInSubset(node.value)
        return _var(node.value)
    if kind == "select":
        return _select(_compile(args[0]), node.value)
    if kind == "has":
        return _has(_compile(args[0]), node.value)
    if kind == "index":
        return _index(_compile(args[0]), _compile(args[1]))
    if kind in ("and", "or"):
        return _logic(_compile(args[0]), _compile(args[1]), kind == "or")
    if kind == "not":
        return _not(_compile(args[0]))
    if kind == "rel":
        return _relation(node.value, _compile(args[0]), _compile(args[1]))
    if kind == "cond":
        return _cond(*(_compile(a) for a in args))
    if kind == "list":
        return _list([_compile(a) for a in args])
    if kind == "map":
        keys = [k.value for k in args[::2]]
        if not all(k.kind == "const" and type(k.value) is str for k in args[::2]) or len(set(keys)) < len(keys):
            raise _NotInSubset("map keys")  # only distinct string literals: anything else may error in CEL
        return _map(keys, [_compile(v) for v in args[1::2]])
    if kind == "call" and node.value == "size" and len(args) == 1:
        return _size_of(_compile(args[0]))
    if kind == "method":
        target, rest = _compile(args[0]), args[1:]
        if node.value == "size" and not rest:
            return _size_of(target)
        method = _STRING_METHODS.get(node.value)
        if method is not None and len(rest) == 1:
            return _string_method(method, target, _compile(rest[0]))
    raise _NotInSubset(kind)


def compile_unchecked(tree: Node) -> Program | None:
    """A program for the parsed expression when it is in the subset, else None, for data the caller has checked
    with `plain` (on other data its value may differ from CEL's, which errors when it converts the data)."""
    try:
        root = _compile(tree)
    except (_NotInSubset, RecursionError):
        return None

    def program(data: Data) -> bool | None:
        try:
            value = root(data)
        except _Error:
            return None
        except RecursionError as exc:  # comparing very deeply nested values
            raise NeedsCel("depth") from exc
        return value if type(value) is bool else None
    return program


def compile_tree(tree: Node, variables: tuple[str, ...]) -> Program | None:
    """A program for the parsed expression when it is in the subset, else None. `variables`: those CEL converts;
    the program raises NeedsCel when one of them holds a value outside plain JSON."""
    unchecked = compile_unchecked(tree)
    if unchecked is None:
        return None
    names = tuple(variables)

    def program(data: Data) -> bool | None:
        for name in names:
            if not _plain(data[name]):
                raise NeedsCel(name)
        return unchecked(data)
    return program


def plain(data: Data, variables: tuple[str, ...], checked: dict[str, bool] | None = None) -> bool:
    """Whether CEL converts each of `variables` in `data` without an error, as values the fast path models
    exactly. `checked` remembers the answers per variable (for several rules on the same data)."""
    if checked is None:
        for name in variables:  # noqa: SIM110 - a loop: all() over a generator costs ~0.1 µs more
            if not _plain(data[name]):
                return False
        return True
    for name in variables:
        if (ok := checked.get(name)) is None:
            ok = checked[name] = _plain(data[name])
        if not ok:
            return False
    return True


def compile_fast(text: str, variables: tuple[str, ...]) -> Program | None:
    """A program for `text` when it is in the subset, else None. `variables` are the ones CEL converts."""
    try:
        tree = parse(text)
    except NotParsed:
        return None
    return compile_tree(tree, variables)
