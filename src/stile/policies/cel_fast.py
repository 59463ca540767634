"""A small subset of CEL compiled to Python closures, so that common rules skip the CEL runtime.

`compile_fast` parses an expression (recursive descent) and returns a program only when every construct is
in the subset, else None and the caller keeps CEL. Semantics follow cel-expr-python, checked by
tests/policies/test_cel_fast.py (tables and random expressions x inputs against real CEL). Subset: literals
(int, double, strings with the escapes \\\\ \\" \\' \\n \\r \\t, true, false, null, lists); the four variables;
`a.b` and `a["b"]` on maps; `has(a.b)`; `==` `!=` (values of different types are unequal; an int and a double
compare as doubles); `<` `<=` `>` `>=` on two numbers, strings or bools; `in` a list or a map's keys; `!`
`&&` `||` (commutative on errors: `error && false` is false); `size`; `startsWith` `endsWith` `contains`.

A program returns True, False, or None for an error or a non-boolean (the caller fails closed). CEL converts
every variable the expression mentions first and errors on values it cannot represent, so a program raises
`NeedsCel` when one holds anything but plain JSON (int64, double, UTF-8 string, bool, null, list,
string-keyed dict) and the caller asks CEL.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable
from typing import Any

Data = dict[str, Any]
Fn = Callable[[Data], Any]
Program = Callable[[Data], "bool | None"]

VARIABLES = ("principal", "tool", "arguments", "request")
_INT_MIN, _INT_MAX = -(2**63), 2**63 - 1
_NUM = (int, float)
_ORDERED = (int, float, str, bool)
_ESCAPES = {"\\": "\\", '"': '"', "'": "'", "n": "\n", "r": "\r", "t": "\t"}
_STRING_METHODS: dict[str, Callable[[str, str], bool]] = {
    "startsWith": str.startswith, "endsWith": str.endswith, "contains": str.__contains__}
_TOKEN = re.compile(r"""
    (?P<ws>[ \t\n\r\f]+)
  | (?P<float>\d+\.\d+(?:[eE][+-]?\d+)?|\d+[eE][+-]?\d+|\.\d+(?:[eE][+-]?\d+)?)
  | (?P<int>\d+)
  | (?P<str>"(?:[^"\\\n\r]|\\.)*"|'(?:[^'\\\n\r]|\\.)*')
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op>&&|\|\||==|!=|<=|>=|[<>!()\[\],.\-])
""", re.VERBOSE)
_RELATIONS = ("==", "!=", "<", "<=", ">", ">=", "in")


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


def _tokens(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise _NotInSubset(text[pos])
        if m.lastgroup != "ws":
            out.append((str(m.lastgroup), m.group()))
        pos = m.end()
    out.append(("end", ""))
    return out


def _unquote(token: str) -> str:
    def escape(m: re.Match[str]) -> str:
        if (c := _ESCAPES.get(m.group(1))) is None:
            raise _NotInSubset("escape")
        return c
    return re.sub(r"\\(.)", escape, token[1:-1])


class _Parser:
    def __init__(self, text: str) -> None:
        self.toks = _tokens(text)
        self.i = 0

    def peek(self) -> tuple[str, str]:
        return self.toks[self.i]

    def take(self, value: str | None = None, kind: str | None = None) -> str:
        k, v = self.toks[self.i]
        if (value is not None and v != value) or (kind is not None and k != kind):
            raise _NotInSubset(v)
        self.i += 1
        return v

    def accept(self, value: str) -> bool:
        k, v = self.toks[self.i]
        if v == value and k in ("op", "ident"):
            self.i += 1
            return True
        return False

    def parse(self) -> Fn:
        fn = self.or_()
        self.take(kind="end")
        return fn

    def or_(self) -> Fn:
        fn = self.and_()
        while self.accept("||"):
            fn = _logic(fn, self.and_(), True)
        return fn

    def and_(self) -> Fn:
        fn = self.relation()
        while self.accept("&&"):
            fn = _logic(fn, self.relation(), False)
        return fn

    def relation(self) -> Fn:
        fn = self.unary()
        while (tok := self.peek())[1] in _RELATIONS and tok[0] in ("op", "ident"):
            self.i += 1
            fn = _relation(tok[1], fn, self.unary())
        return fn

    def unary(self) -> Fn:
        if self.accept("!"):  # CEL's parser drops pairs in a run of `!`: `!!x` is x, even for a non-bool x
            nots = 1
            while self.accept("!"):
                nots += 1
            return _not(self.member_parts()[0]) if nots % 2 else self.member_parts()[0]
        if self.accept("-"):  # only a negative number literal, which takes no suffix
            kind, text = self.peek()
            if kind not in ("int", "float"):
                raise _NotInSubset("-")
            self.i += 1
            return _constant(self.number(kind, text, negative=True))
        return self.member_parts()[0]

    def member_parts(self) -> tuple[Fn, tuple[Fn, str] | None]:
        """The member expression, and (object, field) when its last step is a field selection (for `has`)."""
        fn = self.primary()
        last: tuple[Fn, str] | None = None
        while True:
            if self.accept("."):
                name = self.take(kind="ident")
                if self.accept("("):
                    fn, last = self.method(fn, name), None
                else:
                    fn, last = _select(fn, name), (fn, name)
            elif self.accept("["):
                key = self.take(kind="str")
                self.take("]")
                fn, last = _select(fn, _unquote(key)), None
            else:
                return fn, last

    def method(self, target: Fn, name: str) -> Fn:
        if name == "size":
            self.take(")")
            return lambda d: _size(target(d))
        method = _STRING_METHODS.get(name)
        if method is None:
            raise _NotInSubset(name)
        arg = self.or_()
        self.take(")")
        return _string_method(method, target, arg)

    def primary(self) -> Fn:
        kind, text = self.peek()
        self.i += 1
        if kind == "ident":
            if text in VARIABLES and self.peek()[1] != "(":
                return lambda d: d[text]
            if text in ("true", "false", "null"):
                return _constant({"true": True, "false": False, "null": None}[text])
            if text == "size" and self.accept("("):
                arg = self.or_()
                self.take(")")
                return lambda d: _size(arg(d))
            if text == "has" and self.accept("("):
                return self.has()
            raise _NotInSubset(text)
        if kind in ("int", "float"):
            return _constant(self.number(kind, text, negative=False))
        if kind == "str":
            return _constant(_unquote(text))
        if text == "(":
            fn = self.or_()
            self.take(")")
            return fn
        if text == "[":
            items: list[Fn] = []
            while not self.accept("]"):
                items.append(self.or_())
                if not self.accept(","):
                    self.take("]")
                    break
            return _list(items)
        raise _NotInSubset(text)

    def has(self) -> Fn:
        _, last = self.member_parts()
        self.take(")")
        if last is None:
            raise _NotInSubset("has")
        return _has(*last)

    @staticmethod
    def number(kind: str, text: str, negative: bool) -> int | float:
        if kind == "float":
            if not math.isfinite(number := float(text)):
                raise _NotInSubset(text)
            return -number if negative else number
        value = -int(text) if negative else int(text)
        if not _INT_MIN <= value <= _INT_MAX or (len(text) > 1 and text[0] == "0"):
            raise _NotInSubset(text)
        return value


def compile_fast(text: str, variables: tuple[str, ...]) -> Program | None:
    """A program for `text` when it is in the subset, else None. `variables` are the ones CEL converts."""
    try:
        root = _Parser(text).parse()
    except (_NotInSubset, IndexError, RecursionError):
        return None
    names = tuple(variables)

    def program(data: Data) -> bool | None:
        for name in names:
            if not _plain(data[name]):
                raise NeedsCel(name)
        try:
            value = root(data)
        except _Error:
            return None
        except RecursionError as exc:  # comparing very deeply nested values
            raise NeedsCel("depth") from exc
        return value if type(value) is bool else None
    return program
