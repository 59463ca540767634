"""CEL's expression syntax parsed into a small tree, for the fast paths of `rules` (see `cel_fast`).

The grammar is CEL's (github.com/google/cel-spec, langdef.md), with its precedence: `?:` below `||` below `&&`
below the relations (`== != < <= > >= in`, left-associative, one level) below `+ -` below `* / %` below the
unary `!` and `-` below member access (`.f`, `.f(...)`, `[...]`). It covers what rules use: literals (int, uint,
double, strings with simple escapes, bool, null), lists, maps, variables, calls and methods (macros such as
`exists` parse as method calls). Anything else (raw, bytes or triple-quoted strings, comments, `.?`, message
construction, a leading `.`) raises `NotParsed`, and the caller keeps CEL without any fast path. `parse` is
only called on text CEL has compiled, so the tree describes a valid expression.

A run of `!` or `-` keeps its parity only: CEL's parser drops pairs (`!!x` and `--x` are x, for any x).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

_TOKEN = re.compile(r"""
    (?P<ws>[ \t\n\r\f]+)
  | (?P<float>\d+\.\d+(?:[eE][+-]?\d+)?|\d+[eE][+-]?\d+|\.\d+(?:[eE][+-]?\d+)?)
  | (?P<uint>(?:0[xX][0-9a-fA-F]+|\d+)[uU])
  | (?P<hex>0[xX][0-9a-fA-F]+)
  | (?P<int>\d+)
  | (?P<str>"(?:[^"\\\n\r]|\\.)*"|'(?:[^'\\\n\r]|\\.)*')
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op>&&|\|\||==|!=|<=|>=|[<>!()\[\]{},.\-+*/%?:])
""", re.VERBOSE)
_ESCAPES = {"\\": "\\", '"': '"', "'": "'", "n": "\n", "r": "\r", "t": "\t"}
_RELATIONS = ("==", "!=", "<", "<=", ">", ">=", "in")
_INT_MIN, _INT_MAX = -(2**63), 2**63 - 1
_LITERALS = {"true": True, "false": False, "null": None}


class NotParsed(Exception):
    """Syntax this parser does not model: no fast path for the expression."""


@dataclass(frozen=True, slots=True)
class Node:
    """kind: const (value), var (value: name), select (value: field; args: object), index (object, key),
    has (value: field; args: object), call (value: function), method (value: name; args: target, *arguments),
    not, neg, and, or, cond (test, then, else), rel and arith (value: operator), list, map (k1, v1, k2, v2...)."""

    kind: str
    args: tuple[Node, ...] = ()
    value: Any = None


def _tokens(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise NotParsed(text[pos])
        if m.lastgroup != "ws":
            out.append((str(m.lastgroup), m.group()))
        pos = m.end()
    out.append(("end", ""))
    return out


def _unquote(token: str) -> str:
    def escape(m: re.Match[str]) -> str:
        if (c := _ESCAPES.get(m.group(1))) is None:
            raise NotParsed("escape")
        return c
    return re.sub(r"\\(.)", escape, token[1:-1])


def _number(kind: str, text: str, negative: bool) -> int | float:
    if kind == "float":
        if not math.isfinite(number := float(text)):
            raise NotParsed(text)
        return -number if negative else number
    value = -int(text) if negative else int(text)
    if not _INT_MIN <= value <= _INT_MAX or (len(text) > 1 and text[0] == "0"):
        raise NotParsed(text)
    return value


class _Parser:
    def __init__(self, text: str) -> None:
        self.toks = _tokens(text)
        self.i = 0

    def peek(self) -> tuple[str, str]:
        return self.toks[self.i]

    def take(self, value: str | None = None, kind: str | None = None) -> str:
        k, v = self.toks[self.i]
        if (value is not None and (v != value or k not in ("op", "ident"))) or (kind is not None and k != kind):
            raise NotParsed(v)
        self.i += 1
        return v

    def accept(self, value: str) -> bool:
        k, v = self.toks[self.i]
        if v == value and k in ("op", "ident"):
            self.i += 1
            return True
        return False

    def parse(self) -> Node:
        node = self.expr()
        self.take(kind="end")
        return node

    def expr(self) -> Node:
        test = self.or_()
        if not self.accept("?"):
            return test
        then = self.or_()
        self.take(":")
        return Node("cond", (test, then, self.expr()))

    def or_(self) -> Node:
        node = self.and_()
        while self.accept("||"):
            node = Node("or", (node, self.and_()))
        return node

    def and_(self) -> Node:
        node = self.relation()
        while self.accept("&&"):
            node = Node("and", (node, self.relation()))
        return node

    def relation(self) -> Node:
        node = self.sum()
        while (tok := self.peek())[1] in _RELATIONS and tok[0] in ("op", "ident"):
            self.i += 1
            node = Node("rel", (node, self.sum()), tok[1])
        return node

    def sum(self) -> Node:
        node = self.product()
        while (tok := self.peek())[1] in ("+", "-") and tok[0] == "op":
            self.i += 1
            node = Node("arith", (node, self.product()), tok[1])
        return node

    def product(self) -> Node:
        node = self.unary()
        while (tok := self.peek())[1] in ("*", "/", "%") and tok[0] == "op":
            self.i += 1
            node = Node("arith", (node, self.unary()), tok[1])
        return node

    def unary(self) -> Node:
        for op, kind in (("!", "not"), ("-", "neg")):
            if self.accept(op):
                count = 1
                while self.accept(op):
                    count += 1
                if kind == "neg" and count == 1 and self.peek()[0] in ("int", "float"):
                    negative = self.negative_literal()
                    if negative is not None:
                        return negative
                operand = self.member()
                return Node(kind, (operand,)) if count % 2 else operand
        return self.member()

    def negative_literal(self) -> Node | None:
        """`-` and a number with no member access after it: one negative literal (so -9223372036854775808 fits)."""
        kind, text = self.toks[self.i]
        if self.toks[self.i + 1][1] in (".", "[") and self.toks[self.i + 1][0] == "op":
            return None
        self.i += 1
        return Node("const", (), _number(kind, text, negative=True))

    def member(self) -> Node:
        node = self.primary()
        while True:
            if self.accept("."):
                name = self.take(kind="ident")
                if self.accept("("):
                    node = Node("method", (node, *self.arguments(")")), name)
                else:
                    node = Node("select", (node,), name)
            elif self.accept("["):
                key = self.expr()
                self.take("]")
                node = Node("index", (node, key))
            else:
                return node

    def arguments(self, close: str) -> list[Node]:
        """Comma-separated expressions up to `close` (a trailing comma is allowed for lists and maps only)."""
        items: list[Node] = []
        while not self.accept(close):
            items.append(self.expr())
            if not self.accept(","):
                self.take(close)
                break
            if close == ")" and self.peek()[1] == ")":
                raise NotParsed(",")
        return items

    def primary(self) -> Node:
        kind, text = self.peek()
        self.i += 1
        if kind == "ident":
            if text in _LITERALS:
                return Node("const", (), _LITERALS[text])
            if self.accept("("):
                args = self.arguments(")")
                if text == "has":
                    if len(args) != 1:
                        raise NotParsed("has")
                    return Node("has", args[0].args, args[0].value) if args[0].kind == "select" else \
                        Node("call", tuple(args), "has")
                return Node("call", tuple(args), text)
            if self.peek()[1] == "{":
                raise NotParsed("message construction")
            return Node("var", (), text)
        if kind in ("int", "float"):
            return Node("const", (), _number(kind, text, negative=False))
        if kind in ("uint", "hex"):
            return Node(kind, (), text)  # no fast path models these literals
        if kind == "str":
            return Node("const", (), _unquote(text))
        if text == "(" and kind == "op":
            node = self.expr()
            self.take(")")
            return node
        if text == "[" and kind == "op":
            return Node("list", tuple(self.arguments("]")))
        if text == "{" and kind == "op":
            return self.map_literal()
        raise NotParsed(text)

    def map_literal(self) -> Node:
        parts: list[Node] = []
        while not self.accept("}"):
            parts.append(self.expr())
            self.take(":")
            parts.append(self.expr())
            if not self.accept(","):
                self.take("}")
                break
        return Node("map", tuple(parts))


def parse(text: str) -> Node:
    """The tree of `text` (an expression CEL compiles); NotParsed for syntax outside this parser."""
    try:
        return _Parser(text).parse()
    except (IndexError, RecursionError) as exc:
        raise NotParsed("depth") from exc


def conjuncts(node: Node) -> list[Node]:
    """The operands of the top-level `&&` chain (the node itself when its operator is anything else)."""
    if node.kind != "and":
        return [node]
    return [c for arg in node.args for c in conjuncts(arg)]


def _is_tool_name(node: Node) -> bool:
    return node.kind == "select" and node.value == "name" and node.args[0] == Node("var", (), "tool")


def tool_guard(node: Node) -> str | None:
    """The X of a top-level conjunct `tool.name == "X"` (either side), if any: the expression is false for any
    other tool name, whatever the other conjuncts do (`false && error` is false in CEL)."""
    for c in conjuncts(node):
        if c.kind == "rel" and c.value == "==":
            left, right = c.args
            for a, b in ((left, right), (right, left)):
                if _is_tool_name(a) and b.kind == "const" and type(b.value) is str:
                    return str(b.value)
    return None
