"""Differential fuzzing of the rules engine against CEL: ``python -m bench fuzz-cel [--cases N | --seconds S]``.

Generates CEL expressions (`&& || ! ?:`, relations, `in` on lists and maps, `has()`, member and index access
with missing keys and wrong types, int/uint/double/string/bool/null/list/map literals, `size`, string methods,
arithmetic, with and without parentheses; many under a top-level `tool.name == "X"` conjunct, so the tool guard
is exercised) and input data of the shape `Rules.context_data` builds, and requires `rules.decide` (tool guard
+ `cel_fast` + CEL fallback) to decide each rule, as `deny:` and as `allow:`, exactly as cel-expr-python's value
says, and the fast program (when there is one) to return CEL's value (True, False, or None for an error or a
non-boolean). tests/policies/test_cel_fast.py drives the same generator from hypothesis (bounded, in CI).

On a disagreement it shrinks the expression (replacing subtrees by their parts) and the arguments (dropping
keys), prints both, and exits 1.
"""

from __future__ import annotations

import random
import re
import time
from dataclasses import dataclass, replace
from typing import Any

from cel_expr_python import cel

from stile.config.identity import RuleConfig
from stile.policies.cel_fast import VARIABLES, NeedsCel, compile_fast, plain
from stile.policies.rules import RuleError, compile_rule, decide

Outcome = bool | None  # None: an error or a non-boolean

TOOLS = ["vault.add_note", "crm.search", "crm.update_ticket"]
KEYS = ["a", "b", "title", "n"]
SHAPE = {"principal": ["agent", "user", "roles", "method", "email", "claims"],
         "tool": ["upstream", "name", "exposed", "annotations"], "arguments": KEYS,
         "request": ["virtual_server", "method", "time"]}
_TEXTS = ["", "a", "ab", "zzz", "blocked-bot", "vault.add_note", "crm.search", "é", "😀", '"', "\\", "\n"]
_INTS = [0, 1, -1, 2, 3, 10, -5, 2**53, 2**53 + 1, 2**63 - 1, -(2**63), 1700000000]
_FLOATS = [0.0, -0.0, 1.0, 1.5, -2.5, 3.0, 1e300, 2.0**53, 9.3e18, float("nan"), float("inf")]

# --- expressions: a tree of (template, *children); a leaf is (text,) ----------------------------------------

Tree = tuple[Any, ...]


def render(t: Tree) -> str:
    return t[0] if len(t) == 1 else t[0].format(*(render(c) for c in t[1:]))


def _str_lit(r: random.Random) -> str:
    s = r.choice(_TEXTS)
    body = s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f"'{body}'" if r.random() < 0.1 and "'" not in body else f'"{body}"'


def _num_lit(r: random.Random) -> str:
    x = r.random()
    if x < 0.5:
        return str(r.choice([i for i in _INTS if i >= 0]))
    if x < 0.6:
        return f"{r.choice([0, 1, 3, 2**63])}u"
    if x < 0.7:
        return str(r.choice([i for i in _INTS if i < 0]))
    return r.choice(["0.0", "1.0", "1.5", "-2.5", "3.0", "1e300", "9007199254740992.0", "1e1", ".5"])


def literal(r: random.Random, depth: int = 1) -> Tree:
    x = r.random()
    if x < 0.3:
        return (_str_lit(r),)
    if x < 0.6:
        return (_num_lit(r),)
    if x < 0.75:
        return (r.choice(["true", "false", "null"]),)
    if x < 0.88 or depth <= 0:
        items = [literal(r, depth - 1) for _ in range(r.randint(0, 3))]
        if not items:
            return ("[]",)
        return ("[" + ", ".join(f"{{{i}}}" for i in range(len(items))) + "]", *items)
    keys = r.sample([*KEYS, "x"], r.randint(0, 2))
    if r.random() < 0.1:  # a non-string key: CEL only
        return "{{" + r.choice(["1", "true", "1u", "null"]) + ": {0}}}", literal(r, depth - 1)
    if not keys:
        return ("{}",)
    tmpl = "{{" + ", ".join(f'"{k}": {{{i}}}' for i, k in enumerate(keys)) + "}}"
    return (tmpl, *(literal(r, depth - 1) for _ in keys))


def path(r: random.Random) -> Tree:
    """A variable and one to three steps: mostly keys the data has, some missing, some list indexes."""
    var = r.choices(VARIABLES, weights=[2, 2, 5, 1])[0]
    text, keys = var, SHAPE[var]
    for _ in range(r.choices([1, 2, 3], weights=[6, 3, 1])[0]):
        key = r.choice(keys) if r.random() < 0.85 else "missing"
        y = r.random()
        text += f'["{key}"]' if y < 0.2 else f"[{r.choice([0, 1, -1, 5])}]" if y < 0.3 else f".{key}"
        keys = KEYS
    return (text,)


_RELOPS = ["==", "!=", "<", "<=", ">", ">=", "in"]
_INDEXES = ["0", "1", "1.0", "0.0", "-1", "1.5", "1u", '"a"', '"title"', "null"]


def expression(r: random.Random, depth: int) -> Tree:
    """Any expression, biased towards boolean shapes (so that results are not all errors)."""
    if depth <= 0 or r.random() < 0.3:
        y = r.random()
        if y < 0.4:  # a test of a path (or an index into one), mostly true or false
            target = path(r) if r.random() < 0.7 else ("{0}[" + r.choice(_INDEXES) + "]", path(r))
            return ("{0} " + r.choice(_RELOPS[:-1]) + " {1}", target, literal(r, 0)) if y < 0.3 else \
                (f"has({render(path(r)).split('[')[0]})",)
        return path(r) if y < 0.75 else literal(r)
    x = r.random()
    sub = lambda: expression(r, depth - 1)  # noqa: E731
    p = lambda s: f"({s})" if r.random() < 0.5 else s  # noqa: E731 - parentheses or precedence
    if x < 0.25:
        return (p("{0} " + r.choice(_RELOPS) + " {1}"), sub(), sub() if r.random() < 0.5 else literal(r))
    if x < 0.45:
        return (p("{0} " + r.choice(["&&", "||"]) + " {1}"), sub(), sub())
    if x < 0.52:
        return (p("!{0}") if r.random() < 0.7 else "!!{0}", sub())
    if x < 0.6:  # often boolean branches, so that the test's type decides the outcome
        branch = lambda: sub() if r.random() < 0.5 else (r.choice(["true", "false"]),)  # noqa: E731
        return (p("{0} ? {1} : {2}"), sub(), branch(), branch())
    if x < 0.66:
        return (f"has({render(path(r)).split('[')[0]})",) if r.random() < 0.9 else ("has({0}.a)", sub())
    if x < 0.72:
        return (r.choice(["size({0})", "({0}).size()"]), sub())
    if x < 0.8:
        return ("({0})." + r.choice(["startsWith", "endsWith", "contains"]) + "({1})", sub(),
                sub() if r.random() < 0.3 else (_str_lit(r),))
    if x < 0.87:
        key = (r.choice(_INDEXES),)
        return ("({0})[{1}]", sub(), key if r.random() < 0.6 else sub())
    if x < 0.9:
        return ("({0})." + r.choice(KEYS), sub())
    if x < 0.93:
        return ("[{0}, {1}]", sub(), sub())
    if x < 0.96:
        return ('{{"a": {0}}}', sub())
    return (p("{0} " + r.choice(["+", "-", "*"]) + " {1}"), sub(), sub()) if r.random() < 0.8 else ("-{0}", sub())


def rule_expression(r: random.Random, depth: int = 3) -> Tree:
    """A whole rule: often a `tool.name == "X"` conjunct in a top-level `&&` chain (or under `||`/`?:`)."""
    body = expression(r, depth)
    if r.random() < 0.5:
        return body
    name = r.choice(TOOLS)
    guard = (f'tool.name == "{name}"',) if r.random() < 0.8 else (f'"{name}" == tool.name',)
    x = r.random()
    if x < 0.5:
        return ("{0} && {1}", guard, body) if r.random() < 0.6 else ("{1} && {0}", guard, body)
    if x < 0.7:
        return ("{0} && {1} || {2}", guard, body, expression(r, 2))
    if x < 0.8:
        return ("{0} && {1} ? {2} : {3}", guard, body, expression(r, 1), expression(r, 1))
    return ("({0} && {1}) && {2}", guard, body, expression(r, 2))


# --- data ---------------------------------------------------------------------------------------------------

def value(r: random.Random, depth: int = 2) -> Any:
    x = r.random()
    if x < 0.25:
        return r.choice(_TEXTS)
    if x < 0.45:
        return r.choice(_INTS)
    if x < 0.55:
        return r.choice(_FLOATS)
    if x < 0.7:
        return r.choice([True, False, None])
    if x < 0.8 or depth <= 0:
        return [value(r, depth - 1) for _ in range(r.randint(0, 3))] if depth > 0 else []
    if x < 0.97:
        return {k: value(r, depth - 1) for k in r.sample(KEYS, r.randint(0, 3))}
    return r.choice([2**64, "\ud800", 2**63])  # JSON can carry these; CEL cannot convert them


def data(r: random.Random) -> dict[str, Any]:
    tool = r.choice(TOOLS)
    upstream, _, name = tool.partition(".")
    return {
        "principal": {"agent": r.choice(["bot", "blocked-bot", ""]), "user": r.choice(["", "u1"]),
                      "roles": r.sample(["reader", "ops", "admin"], r.randint(0, 2)), "method": "api_key",
                      "email": "", "claims": {k: value(r, 1) for k in r.sample(KEYS, r.randint(0, 2))}},
        "tool": {"upstream": upstream, "name": tool, "exposed": r.choice([name, None]),
                 "annotations": r.choice([{}, {"readOnlyHint": True}])},
        "arguments": {k: value(r) for k in r.sample(KEYS, r.randint(0, 4))},
        "request": {"virtual_server": "main", "method": "tools/call", "time": 1700000000},
    }


# --- the comparison -----------------------------------------------------------------------------------------

def cel_outcome(program: Any, text: str, d: dict[str, Any]) -> Outcome:
    """CEL's value for `text`, given the variables the text names (as the gateway converts only those)."""
    try:
        v = program.eval(data={k: d[k] for k in VARIABLES if re.search(rf"\b{k}\b", text)})
    except RuntimeError:
        return None
    return bool(v.value()) if v.type() == cel.Type.BOOL else None


@dataclass
class Disagreement:
    text: str
    data: dict[str, Any]
    detail: str


def check(text: str, datas: list[dict[str, Any]]) -> Disagreement | bool | None:
    """None when the engine agrees with CEL on every input; False when CEL rejects the text (no rule)."""
    try:
        deny = compile_rule(RuleConfig(name="r", deny=text))
    except RuleError:  # CEL's checker rejects it: no rule is ever built from it
        return False
    program = deny.program  # CEL's own compiled program: the reference
    allow = replace(deny, cfg=RuleConfig(name="r", allow=text))  # the same compiled parts, read as `allow:`
    for d in datas:
        want = cel_outcome(program, text, d)
        denied, allowed = not decide([deny], d).allowed, decide([allow], d).allowed
        if denied != (want is not False) or allowed != (want is True):
            return Disagreement(text, d, f"CEL {want}: deny rule denied={denied}, allow rule allowed={allowed}")
        if deny.fast is not None and plain(d, deny.variables):
            try:
                got = deny.fast(d)
            except NeedsCel:
                continue
            if got != want:
                return Disagreement(text, d, f"CEL {want}: cel_fast {got}")
    return None


def _subtrees(t: Tree) -> list[Tree]:
    """Smaller candidates for `t`: each child, a simpler leaf, and `t` with one child shrunk."""
    if len(t) == 1:
        return [(s,) for s in ("true", "false", "1", "null") if s != t[0]]
    out = list(t[1:])
    for i, child in enumerate(t[1:], 1):
        out += [(*t[:i], c, *t[i + 1:]) for c in _subtrees(child)]
    return out


def _part(d: dict[str, Any], where: str) -> dict[str, Any]:
    return d["arguments"] if where == "arguments" else d["principal"]["claims"]


def _without(d: dict[str, Any], where: str, key: str) -> dict[str, Any]:
    kept = {k: v for k, v in _part(d, where).items() if k != key}
    return {**d, "arguments": kept} if where == "arguments" else {**d, "principal": {**d["principal"], "claims": kept}}


def shrink(tree: Tree, d: dict[str, Any]) -> tuple[Tree, dict[str, Any]]:
    """Greedily the smallest tree, arguments and claims that still disagree."""
    progress = True
    while progress:
        progress = False
        for cand in sorted(_subtrees(tree), key=lambda c: len(render(c))):
            if len(render(cand)) < len(render(tree)) and isinstance(check(render(cand), [d]), Disagreement):
                tree, progress = cand, True
                break
        for where in ("arguments", "claims"):
            for k in list(_part(d, where)):
                smaller = _without(d, where, k)
                if isinstance(check(render(tree), [smaller]), Disagreement):
                    d, progress = smaller, True
    return tree, d


def run(cases: int, seconds: float | None, seed: int, inputs: int = 8) -> int:
    r = random.Random(seed)
    start = last = time.monotonic()
    done = rejected = fast = 0
    while done < cases and (seconds is None or time.monotonic() - start < seconds):
        tree = rule_expression(r)
        datas = [data(r) for _ in range(inputs)]
        text = render(tree)
        result = check(text, datas)
        if result is False:
            rejected += 1
            continue
        if isinstance(result, Disagreement):
            small, d = shrink(tree, result.data)
            final = check(render(small), [d])
            print(f"DISAGREEMENT after {done:,} cases (seed {seed}):\n  expression: {render(small)}\n"
                  f"  data: {d!r}\n  {final.detail if isinstance(final, Disagreement) else result.detail}\n"
                  f"  original: {text}")
            return 1
        fast += compile_fast(text, VARIABLES) is not None
        done += len(datas)
        if (now := time.monotonic()) - last >= 10:
            print(f"{done:,} cases, {done / (now - start):,.0f} cases/s", flush=True)
            last = now
    elapsed = time.monotonic() - start
    exprs = done // inputs
    print(f"OK: {done:,} cases ({exprs:,} expressions x {inputs} inputs, {fast / max(exprs, 1):.0%} on the fast "
          f"path; {rejected:,} more rejected by CEL's checker) in {elapsed:.1f} s, {done / elapsed:,.0f} cases/s")
    return 0
