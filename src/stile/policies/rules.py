"""Per-argument policy rules in CEL, evaluated on named requests (tools/call, prompts/get, resources/read).

Variables: `principal` (agent, user, roles, method, email, claims), `tool` (upstream, name as
`upstream.tool`, exposed, annotations), `arguments`, `request` (virtual_server, method, time). A `deny`
rule denies when its expression is true; an `allow` rule denies when its expression is false. An
expression that errors (a missing key, a type mismatch) fails closed: it denies. `mode: shadow` rules
only log what they would have decided. The caller sees the rule's `reason`, never its expression.
Fast paths, both derived from the parsed expression (`cel_parse`) and checked against CEL by a differential
fuzz test (tests/policies/test_cel_fast.py, `python -m bench fuzz-cel`): an expression in a small subset of
CEL runs as Python closures (`cel_fast`); an expression whose top-level `&&` chain has a conjunct
`tool.name == "X"` is false for every other tool (CEL's `false && error` is false too), decided without
evaluating it once the variables it mentions are known to convert (else CEL decides, and may error).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cel_expr_python import cel

from stile.config.identity import RuleConfig
from stile.core.context import CallContext, CallNext, Reply
from stile.policies.cel_fast import NeedsCel, Program, compile_unchecked, plain
from stile.policies.cel_parse import Node, NotParsed, parse, tool_guard
from stile.wire.errors import ClientError

if TYPE_CHECKING:
    from stile.core.catalog import ViewSource

log = logging.getLogger("stile.rules")
_VARIABLES = {"principal": cel.Type.DYN, "tool": cel.Type.DYN, "arguments": cel.Type.DYN, "request": cel.Type.DYN}
_ENV = cel.NewEnv(variables=_VARIABLES)
POLICY_DENIED = -32010


class PolicyDenied(ClientError):
    jsonrpc_code = POLICY_DENIED
    http_status = 200


class RuleError(ValueError):
    """A rule that does not compile; the message names the rule and the position."""


@dataclass(frozen=True)
class Decision:
    allowed: bool
    rule: str | None = None
    reason: str | None = None
    shadow: list[tuple[str, bool]] | None = None  # (rule, would have allowed) for shadow rules


_ALLOWED = Decision(True)


@dataclass(frozen=True)
class _Compiled:
    cfg: RuleConfig
    program: Any
    variables: tuple[str, ...]  # the variables the expression mentions: only those are converted to CEL
    tool_guard: str | None = None  # a top-level conjunct `tool.name == "X"`: false for every other tool
    fast: Program | None = None  # cel_fast's program when the expression is in its subset (for `plain` data)

    def denies(self, data: dict[str, Any], checked: dict[str, bool] | None = None) -> bool:
        """`checked`: which variables convert to CEL, shared by the rules of one decision (see `plain`)."""
        if self.tool_guard is not None:
            tool = data["tool"]
            if (type(tool) is dict and type(name := tool.get("name")) is str and name != self.tool_guard
                    and plain(data, self.variables, checked)):  # CEL would convert them without an error
                return self.cfg.deny is None  # the expression is false: a deny rule passes, an allow rule denies
        if self.fast is None or not plain(data, self.variables, checked):
            result = self.evaluate(data)  # outside the subset, or a value outside plain JSON: CEL decides
        else:
            try:
                result = self.fast(data)
            except NeedsCel:  # values nested too deeply to compare in Python
                result = self.evaluate(data)
        if result is None:  # an evaluation error or a non-boolean: fail closed
            return True
        return result if self.cfg.deny is not None else not result

    def evaluate(self, data: dict[str, Any]) -> bool | None:
        """The expression's value by CEL: None for an error or a non-boolean."""
        try:
            value = self.program.eval(data={k: data[k] for k in self.variables})
        except RuntimeError:
            return None
        return bool(value.value()) if value.type() == cel.Type.BOOL else None


def _referenced(node: Node, found: set[str]) -> set[str]:
    if node.kind == "var":
        found.add(node.value)
    for arg in node.args:
        _referenced(arg, found)
    return found


def compile_rule(rule: RuleConfig, where: str = "rule") -> _Compiled:
    """CEL's program for the rule, and the fast paths its parsed expression allows; RuleError names `where`."""
    text = rule.deny if rule.deny is not None else rule.allow
    assert text is not None
    try:
        program = _ENV.compile(text)
    except RuntimeError as exc:
        raise RuleError(f"{where} ({rule.name}): {str(exc).split(chr(10), 1)[-1].strip()}") from exc
    try:
        tree = parse(text)
    except NotParsed:  # syntax the parser does not model: CEL alone, with every variable
        return _Compiled(rule, program, tuple(_VARIABLES))
    try:
        found = _referenced(tree, set())
    except RecursionError:
        return _Compiled(rule, program, tuple(_VARIABLES))
    used = tuple(v for v in _VARIABLES if v in found)
    return _Compiled(rule, program, used, tool_guard(tree), compile_unchecked(tree))


def compile_rules(rules: list[RuleConfig]) -> list[_Compiled]:
    return [compile_rule(rule, f"rules[{i}]") for i, rule in enumerate(rules)]


def decide(rules: list[_Compiled], data: dict[str, Any]) -> Decision:
    shadow: list[tuple[str, bool]] = []
    checked: dict[str, bool] | None = {} if len(rules) > 1 else None  # which variables convert, for all rules
    for rule in rules:
        denied = rule.denies(data, checked)
        if rule.cfg.mode == "shadow":
            shadow.append((rule.cfg.name, not denied))
            continue
        if denied:
            return Decision(False, rule.cfg.name, rule.cfg.reason, shadow or None)
    return Decision(True, shadow=shadow) if shadow else _ALLOWED


class Rules:
    """The pipeline policy; runs after access control, on the request the caller is allowed to see."""

    def __init__(self, rules: list[RuleConfig], views: ViewSource) -> None:
        self.views = views
        self.rules = compile_rules(rules)

    def context_data(self, ctx: CallContext) -> dict[str, Any] | None:
        view = ctx.view or self.views.view(ctx.virtual_server)
        if view is None:
            return None
        params = ctx.params
        if ctx.method == "tools/call":
            target = view.tool_index.get(params.get("name", ""))
        elif ctx.method == "prompts/get":
            target = view.prompt_index.get(params.get("name", ""))
        else:
            return None
        if target is None:
            return None  # unknown: the router answers it
        exposed = params.get("name")
        args = params.get("arguments")
        return {
            "principal": ctx.principal.as_cel(),
            "tool": {"upstream": target.upstream, "name": f"{target.upstream}.{target.original}",
                     "exposed": exposed, "annotations": target.annotations},
            "arguments": args if isinstance(args, dict) else {},
            "request": {"virtual_server": ctx.virtual_server, "method": ctx.method, "time": int(time.time())},
        }

    async def __call__(self, ctx: CallContext, call_next: CallNext) -> Reply:
        if not self.rules or ctx.method not in ("tools/call", "prompts/get"):
            return await call_next(ctx)
        data = self.context_data(ctx)
        if data is None:
            return await call_next(ctx)
        decision = decide(self.rules, data)
        for name, would_allow in decision.shadow or ():
            log.info("shadow rule %s would %s %s for %s", name, "allow" if would_allow else "deny",
                     data["tool"]["name"], ctx.principal.agent or ctx.principal.user or "anonymous")
        if not decision.allowed:
            log.info("rule %s denied %s for %s", decision.rule, data["tool"]["name"],
                     ctx.principal.agent or ctx.principal.user or "anonymous")
            raise PolicyDenied(f"denied by policy: {decision.reason}", data={"rule": decision.rule})
        return await call_next(ctx)
