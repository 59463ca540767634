"""Toxic-flow rules (`policies.flows`): refuse a tool call given what the session has already touched.

Tools carry labels: `labels: {"files.read": [reads_private], "web.*": [untrusted_content]}` (keys are
`upstream.tool` names or globs), plus labels derived from annotations (`derive_from_annotations`, on by
default): `openWorldHint: true` -> `untrusted_content`, `destructiveHint: true` -> `destructive`. Every
admitted `tools/call` adds its tool's labels to its history's `labels_seen`. A flow denies a call when
the called tool has every label of `call_has`, the history has seen every label of `seen_all` and, when
given, at least one of `seen_any`: e.g. the "lethal trifecta", an `egress` call after private data and
untrusted content were read. A denial raises `FlowDenied` (JSON-RPC -32010 like the rules, HTTP 200,
`data: {rule: "flow:<name>", flow: <name>}`), audited as a denial with the flow's name and reason;
a denied call adds nothing to the history. Instead of `call_has`/`seen_*`, `deny_when: {cel: "..."}` is a
CEL expression over `session` (`labels_seen`, `virtual_server`), `tool` (`name` as `upstream.tool`,
`labels`, `annotations`) and `principal`: true denies, and so does an error or a non-boolean (fail
closed). Flows are evaluated for calls of labelled tools only (an unlabelled call costs one dict lookup).

Whose history: a legacy client's session (`Mcp-Session-Id`). Modern clients are stateless, so their
history is the principal's (auth method, agent, user) on that virtual server, narrowed by an optional
client hint `params._meta["io.stile/session"]` (a conversation id): a client that sends no hint shares one
history across all its conversations, which errs towards refusing. Histories expire `window_s` after
their last call and at most `max_sessions` are kept (least recently used first); at most `max_labels`
labels per history. Replicas and workers sharing a bus (`redis:`, or the Unix bus of `--workers`) share the
histories too (`policies/flows_shared.py`), so calls of one session landing on different processes count
together. The flows protect a well-meaning agent from being steered by injected content,
not the gateway from a client that opens a fresh session to forget its history.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any

from cel_expr_python import cel
from pydantic import BaseModel, ConfigDict, Field, model_validator

from stile.bus import Bus
from stile.core.catalog import Target, ViewSource, matches
from stile.core.context import CallContext, CallNext, Reply
from stile.policies.flows_shared import SharedHistory
from stile.policies.registry import PolicyDeps, PolicyType, register
from stile.policies.rules import PolicyDenied

SESSION_HINT = "io.stile/session"
_MAX_HINT = 128
_ENV = cel.NewEnv(variables={"session": cel.Type.DYN, "tool": cel.Type.DYN, "principal": cel.Type.DYN})


class FlowDenied(PolicyDenied):
    """A call refused because of what its session saw before (a toxic flow)."""


class DenyWhen(BaseModel):
    model_config = ConfigDict(extra="forbid")
    call_has: list[str] | None = Field(default=None, min_length=1)  # the called tool has all of these labels
    seen_all: list[str] = Field(default_factory=list)  # the history has seen all of these
    seen_any: list[str] = Field(default_factory=list)  # ...and at least one of these (when given)
    cel: str | None = None  # instead: a CEL expression over session, tool, principal; true (or an error) denies

    @model_validator(mode="after")
    def _shape(self) -> DenyWhen:
        if self.cel is not None:
            if self.call_has is not None or self.seen_all or self.seen_any:
                raise ValueError("give either cel or call_has/seen_all/seen_any, not both")
            try:
                _ENV.compile(self.cel)
            except RuntimeError as exc:
                raise ValueError(f"cel: {str(exc).split(chr(10), 1)[-1].strip()}") from exc
            return self
        if self.call_has is None:
            raise ValueError("a flow needs call_has (or cel)")
        if not self.seen_all and not self.seen_any:
            raise ValueError("a flow needs seen_all or seen_any (without history it is an access rule)")
        return self


class FlowConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1)
    deny_when: DenyWhen
    reason: str = "this call would complete a forbidden data flow"
    virtual_servers: list[str] | None = None  # None: every virtual server


class FlowsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    labels: dict[str, list[str]] = Field(default_factory=dict)  # `upstream.tool` or glob -> labels
    derive_from_annotations: bool = True
    flows: list[FlowConfig] = Field(default_factory=list)
    window_s: float = Field(default=3600.0, gt=0)
    max_sessions: int = Field(default=10_000, ge=1)
    max_labels: int = Field(default=64, ge=1)


class _Compiled:
    __slots__ = ("call_has", "name", "program", "reason", "seen_all", "seen_any", "virtual_servers")

    def __init__(self, cfg: FlowConfig) -> None:
        self.name = cfg.name
        self.reason = cfg.reason
        self.call_has = frozenset(cfg.deny_when.call_has or ())
        self.seen_all = frozenset(cfg.deny_when.seen_all)
        self.seen_any = frozenset(cfg.deny_when.seen_any)
        self.program = _ENV.compile(cfg.deny_when.cel) if cfg.deny_when.cel is not None else None
        self.virtual_servers = frozenset(cfg.virtual_servers) if cfg.virtual_servers is not None else None

    def denies(self, labels: frozenset[str], seen: set[str], ctx: CallContext, target: Target) -> bool:
        if self.program is not None:
            data = {"session": {"labels_seen": sorted(seen), "virtual_server": ctx.virtual_server},
                    "tool": {"name": f"{target.upstream}.{target.original}", "labels": sorted(labels),
                             "annotations": target.annotations},
                    "principal": ctx.principal.as_cel()}
            try:
                value = self.program.eval(data=data)
            except RuntimeError:
                return True  # an evaluation error fails closed, as the rules do
            return value.type() != cel.Type.BOOL or bool(value.value())
        return (self.call_has <= labels and self.seen_all <= seen
                and (not self.seen_any or not self.seen_any.isdisjoint(seen)))


class History:
    """labels_seen per history key: bounded (LRU, `max_sessions`), expiring `window_s` after the last call."""

    def __init__(self, max_sessions: int, max_labels: int, window_s: float) -> None:
        self.max_sessions, self.max_labels, self.window_s = max_sessions, max_labels, window_s
        self._entries: OrderedDict[tuple[Any, ...], tuple[float, set[str]]] = OrderedDict()

    def seen(self, key: tuple[Any, ...], now: float) -> set[str]:
        entry = self._entries.get(key)
        if entry is None or now - entry[0] > self.window_s:
            return set()
        return entry[1]

    def add(self, key: tuple[Any, ...], labels: frozenset[str], now: float) -> None:
        entry = self._entries.get(key)
        seen = entry[1] if entry is not None and now - entry[0] <= self.window_s else set()
        for label in labels:
            if len(seen) >= self.max_labels:
                break
            seen.add(label)
        self._entries[key] = (now, seen)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_sessions:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


def history_key(ctx: CallContext) -> tuple[Any, ...]:
    if ctx.session_id is not None:
        return ("session", ctx.virtual_server, ctx.session_id)
    p = ctx.principal
    meta = ctx.params.get("_meta")
    hint = meta.get(SESSION_HINT) if isinstance(meta, dict) else None
    return ("principal", ctx.virtual_server, p.method, p.agent, p.user,
            hint[:_MAX_HINT] if isinstance(hint, str) else None)


class Flows:
    def __init__(self, cfg: FlowsConfig, views: ViewSource, bus: Bus | None = None) -> None:
        self.cfg = cfg
        self.views = views
        self.flows = [_Compiled(f) for f in cfg.flows]
        self.enabled = bool(self.flows)
        self.history = History(cfg.max_sessions, cfg.max_labels, cfg.window_s)
        # replicas and workers sharing a bus share the histories (policies/flows_shared.py)
        self.shared = SharedHistory(bus, cfg.max_labels, cfg.window_s) if bus is not None and bus.shared else None
        self._exact = {k: frozenset(v) for k, v in cfg.labels.items() if not any(c in k for c in "*?[")}
        self._globs = [(k, frozenset(v)) for k, v in cfg.labels.items() if any(c in k for c in "*?[")]
        self._labels: dict[tuple[str, str, bool, bool], frozenset[str]] = {}

    def labels_of(self, target: Target) -> frozenset[str]:
        ann = target.annotations
        open_world = ann.get("openWorldHint") is True
        destructive = ann.get("destructiveHint") is True
        key = (target.upstream, target.original, open_world, destructive)
        found = self._labels.get(key)
        if found is None:
            ref = f"{target.upstream}.{target.original}"
            labels = set(self._exact.get(ref, ()))
            for pattern, more in self._globs:
                if matches(ref, [pattern]):
                    labels |= more
            if self.cfg.derive_from_annotations:
                if open_world:
                    labels.add("untrusted_content")
                if destructive:
                    labels.add("destructive")
            found = frozenset(labels)
            if len(self._labels) > 65_536:
                self._labels.clear()
            self._labels[key] = found
        return found

    async def __call__(self, ctx: CallContext, call_next: CallNext) -> Reply:
        if not self.enabled or ctx.method != "tools/call":
            return await call_next(ctx)
        view = ctx.view or self.views.view(ctx.virtual_server)
        name = ctx.params.get("name")
        target = view.tool_index.get(name) if view is not None and isinstance(name, str) else None
        if target is None:
            return await call_next(ctx)  # unknown: the router answers it
        labels = self.labels_of(target)
        if not labels:
            return await call_next(ctx)
        key = history_key(ctx)
        now = time.monotonic()
        seen = self.history.seen(key, now)
        shared_seen: set[str] | None = None
        if self.shared is not None:
            shared_seen = await self.shared.seen(key)
            seen = seen | shared_seen
        vs = ctx.virtual_server
        for flow in self.flows:
            if (flow.virtual_servers is None or vs in flow.virtual_servers) and flow.denies(labels, seen, ctx, target):
                raise FlowDenied(f"denied by flow policy: {flow.reason}",
                                 data={"rule": f"flow:{flow.name}", "flow": flow.name})
        self.history.add(key, labels, now)
        if self.shared is not None and shared_seen is not None:
            await self.shared.add(key, labels, shared_seen)
        return await call_next(ctx)


def _flows(deps: PolicyDeps, config: Any) -> Flows:
    return Flows(config if isinstance(config, FlowsConfig) else FlowsConfig(), deps.views, deps.bus)


FLOWS = register(PolicyType("flows", _flows, FlowsConfig, order=35,
                            doc="toxic-flow rules over the labels a session has seen"))
