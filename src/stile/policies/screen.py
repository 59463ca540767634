"""Poisoning and injection screens (`policies.screen`): tool descriptions at discovery, tool results per call.

Descriptions: every tool's, prompt's, resource's and resource template's `description` and `title`, every
`description` inside a tool's `inputSchema` and a prompt's argument descriptions, of the caller's view, are
scored by the built-in screen (`screen_rules`) and by an optional plug-in classifier. What a hit does is set per
virtual server (`descriptions:`):
- `flag`: the tool stays; the hit is logged (`stile.screen`) each time a screened view is computed;
- `block`: the tool is hidden while its definition is a hit (absent from lists, a call answers exactly
  like an unknown tool: the router only knows the screened view; a hidden resource or template reads like
  an unknown URI);
- `quarantine`: hidden until a reviewer approves that exact definition: its digest (`stile_digest`,
  printed in the log line and by `stile screen`) listed under `approved:` in the config, or approved at
  runtime through the admin API (`POST /admin/screen/approve`, in that process's memory).
The server `instructions` in `initialize` / `server/discover` replies are screened too: a hit is dropped
from the reply (`block`, `quarantine`: its digest under `approved:` keeps it) or logged (`flag`).
The screen narrows the view the way access control does (`ctx.with_view`), once per source view; `core`
knows nothing of it.

Results (`results:`): the text content blocks of `tools/call` results and the text of embedded
resources. `flag` logs, `block` replaces the reply by a `ScreenBlocked` error (JSON-RPC -32012, HTTP 200,
`data: {rule: "screen", hits}`), audited as a denial.
Only the first `max_scan_chars` of each text are scored.

Plug-in classifier (`classifier: "package.module:callable"`, or `classifier: "entrypoint:<name>"` for an
entry point in the group `stile.screens`): called as `f(text, kind)` with kind `description` or `result`,
returns a score in [0, 1]; `classifier_threshold` (0.5) or more is a hit. It runs on descriptions (once
per definition); on results only with `classify_results: true` (it is on the request path then).
"""

from __future__ import annotations

import hashlib
import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from importlib.metadata import entry_points
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator

from stile.core.catalog import Item, Target, View, ViewSource
from stile.core.context import CallContext, CallNext, Reply
from stile.policies.registry import PolicyDeps, PolicyType, register
from stile.policies.rules import PolicyDenied
from stile.policies.screen_model import Kind
from stile.policies.screen_rules import Verdict, scan

log = logging.getLogger("stile.screen")
SCREEN_BLOCKED = -32012  # -32011 is a rate limit (policies/ratelimit.py)
_LISTS = frozenset({"tools/list", "prompts/list", "resources/list", "resources/templates/list"})
# methods whose routing must see the screened view (a hidden definition answers like a nonexistent one)
_ROUTED = frozenset({"tools/call", "prompts/get", "completion/complete", "resources/read", "resources/subscribe",
                     "resources/unsubscribe"})
_HANDSHAKES = frozenset({"initialize", "server/discover"})  # their replies carry the server's `instructions`
Classifier = Callable[[str, str], float]
DescriptionAction = Literal["off", "flag", "block", "quarantine"]
ResultAction = Literal["off", "flag", "block"]


@dataclass(frozen=True, slots=True)
class Quarantined:
    """A definition hidden until a reviewer approves its digest."""

    digest: str
    kind: str  # tool | prompt | resource | resource template
    ref: str  # upstream.name (upstream.uri for resources and templates)
    hits: tuple[str, ...]

    def as_dict(self) -> dict[str, object]:
        return {"digest": self.digest, "kind": self.kind, "ref": self.ref, "hits": list(self.hits)}


class ScreenBlocked(PolicyDenied):
    """A tool result the screen refused (audited as a denial)."""

    jsonrpc_code = SCREEN_BLOCKED
    http_status = 200


class ScreenActions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    descriptions: DescriptionAction | None = None
    results: ResultAction | None = None


class ScreenConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    descriptions: DescriptionAction = "off"  # the default for every virtual server
    results: ResultAction = "off"
    virtual_servers: dict[str, ScreenActions] = Field(default_factory=dict)
    approved: list[str] = Field(default_factory=list)  # digests of reviewed definitions (quarantine)
    classifier: str | None = None  # "module:callable" or "entrypoint:<name>" (group stile.screens)
    classifier_threshold: float = Field(default=0.5, ge=0, le=1)
    classify_results: bool = False
    max_scan_chars: int = Field(default=65_536, ge=1)

    @field_validator("classifier")
    @classmethod
    def _shape(cls, v: str | None) -> str | None:
        if v is not None:
            if ":" not in v or not all(v.split(":", 1)):
                raise ValueError("want 'package.module:callable' or 'entrypoint:<name>'")
            load_classifier(v)  # a config error, not a crash at startup
        return v


def load_classifier(spec: str) -> Classifier:
    """The callable named by `spec` (see ScreenConfig.classifier); ValueError when it cannot be loaded."""
    head, tail = spec.split(":", 1)
    if head == "entrypoint":
        found = [ep for ep in entry_points(group="stile.screens") if ep.name == tail]
        if not found:
            raise ValueError(f"no entry point {tail!r} in group 'stile.screens'")
        obj = found[0].load()
    else:
        try:
            obj = importlib.import_module(head)
        except ImportError as exc:
            raise ValueError(f"cannot import {head!r}: {exc}") from exc
        for part in tail.split("."):
            obj = getattr(obj, part, None)
    if not callable(obj):
        raise ValueError(f"{spec!r} is not a callable")
    fn: Classifier = obj
    return fn


def definition_texts(item: Item) -> list[str]:
    """The texts of one tool or prompt definition a model reads: description, title, argument descriptions."""
    out: list[str] = []
    for key in ("description", "title"):
        v = item.get(key)
        if isinstance(v, str) and v:
            out.append(v)
    _schema_texts(item.get("inputSchema"), out, 0)
    for arg in item.get("arguments") or ():
        if isinstance(arg, dict) and isinstance(arg.get("description"), str):
            out.append(arg["description"])
    return out


def _schema_texts(node: Any, out: list[str], depth: int) -> None:
    if depth > 32:
        return
    if isinstance(node, dict):
        for k, v in node.items():
            if k in ("description", "title") and isinstance(v, str):
                out.append(v)
            else:
                _schema_texts(v, out, depth + 1)
    elif isinstance(node, list):
        for v in node:
            _schema_texts(v, out, depth + 1)


def digest(item: Item) -> str:
    """What a reviewer approves: the SHA-256 of the definition as canonical JSON (its exposed name included)."""
    return hashlib.sha256(orjson.dumps(item, option=orjson.OPT_SORT_KEYS)).hexdigest()[:32]


class Screen:
    def __init__(self, cfg: ScreenConfig, views: ViewSource, virtual_servers: list[str]) -> None:
        self.cfg = cfg
        self.views = views
        self.classifier = load_classifier(cfg.classifier) if cfg.classifier else None
        self.approved: set[str] = set(cfg.approved)
        self._actions: dict[str, tuple[str, str]] = {}
        for vs in virtual_servers:
            own = cfg.virtual_servers.get(vs, ScreenActions())
            self._actions[vs] = (own.descriptions or cfg.descriptions, own.results or cfg.results)
        self.enabled = any(a != ("off", "off") for a in self._actions.values())
        for name in sorted(set(cfg.virtual_servers) - set(virtual_servers)):
            log.warning("policies.screen.virtual_servers.%s: no such virtual server", name)
        self._verdicts: dict[str, tuple[str, ...]] = {}  # digest -> hits (empty: clean), per definition
        self._views: dict[tuple[str, int], tuple[View, View]] = {}  # (vs, id(source)) -> (source, screened)
        self._quarantined: dict[str, Quarantined] = {}  # digest -> what awaits review

    # --- review ------------------------------------------------------------------------------
    def approve(self, item_digest: str) -> bool:
        """Release a quarantined definition (in memory; list it under `approved:` to keep it)."""
        known = item_digest in self._quarantined
        self.approved.add(item_digest)
        self._quarantined.pop(item_digest, None)
        self._views.clear()
        return known

    def quarantined(self) -> dict[str, str]:
        """digest -> "upstream.name" (or "upstream.uri") of every definition awaiting review."""
        return {d: q.ref for d, q in self._quarantined.items()}

    def quarantine_entries(self) -> list[Quarantined]:
        return sorted(self._quarantined.values(), key=lambda q: (q.ref, q.digest))

    async def start(self) -> None:  # in the runtime's lifecycle so that the admin API can find the screen
        return None

    async def aclose(self) -> None:
        return None

    # --- scoring -----------------------------------------------------------------------------
    def score_text(self, text: str, kind: Kind) -> tuple[str, ...]:
        text = text[:self.cfg.max_scan_chars]
        verdict: Verdict = scan(text, kind)
        hits = verdict.hits if verdict.flagged else ()
        if self.classifier is not None and (kind == "description" or self.cfg.classify_results):
            try:
                score = self.classifier(text, kind)
            except Exception:  # a plug-in's boundary: its failure must not fail the request
                log.exception("screen: the classifier %s failed; the built-in rules decide", self.cfg.classifier)
                score = None
            if isinstance(score, int | float) and score >= self.cfg.classifier_threshold:
                hits = (*hits, "classifier")
        return hits

    def definition_hits(self, item: Item) -> tuple[str, tuple[str, ...]]:
        d = digest(item)
        hits = self._verdicts.get(d)
        if hits is None:
            found: list[str] = []
            for text in definition_texts(item):
                for h in self.score_text(text, "description"):
                    if h not in found:
                        found.append(h)
            hits = tuple(found)
            if len(self._verdicts) > 65_536:
                self._verdicts.clear()
            self._verdicts[d] = hits
        return d, hits

    # --- views ---------------------------------------------------------------------------------
    def screened(self, vs: str, view: View, action: str) -> View:
        key = (vs, id(view))
        cached = self._views.get(key)
        if cached is not None and cached[0] is view:
            return cached[1]
        tools, tool_index = self._keep(view.tools, view.tool_index, action, "tool")
        prompts, prompt_index = self._keep(view.prompts, view.prompt_index, action, "prompt")
        resources, resource_index = self._keep_uris(view.resources, view.resource_index, "uri", vs, action)
        templates, template_index = self._keep_uris(view.templates, view.template_index, "uriTemplate", vs, action)
        same = (tools is view.tools and prompts is view.prompts and resources is view.resources
                and templates is view.templates)
        out = view if same else replace(
            view, tools=tools, tool_index=tool_index, prompts=prompts, prompt_index=prompt_index,
            resources=resources, resource_index=resource_index, templates=templates, template_index=template_index)
        if len(self._views) > 4096:
            self._views.clear()
        self._views[key] = (view, out)
        return out

    def _keep(self, items: list[Item], index: dict[str, Target], action: str,
              what: str) -> tuple[list[Item], dict[str, Target]]:
        kept: list[Item] = []
        kept_index: dict[str, Target] = {}
        dropped = False
        for item in items:
            name = item.get("name", "")
            target = index.get(name)
            if target is None:
                continue
            if self._hidden(item, f"{target.upstream}.{target.original}", what, action):
                dropped = True
                continue
            kept.append(item)
            kept_index[name] = target
        return (kept, kept_index) if dropped else (items, index)

    def _keep_uris(self, items: list[Item], index: dict[str, tuple[str, str]], key: str, vs: str,
                   action: str) -> tuple[list[Item], dict[str, tuple[str, str]]]:
        """Resources (key `uri`) or resource templates (`uriTemplate`): a hidden one leaves the list and the
        index, so reading its URI answers like an unknown resource (unless a listed template covers it)."""
        kept: list[Item] = []
        kept_index: dict[str, tuple[str, str]] = {}
        what = "resource" if key == "uri" else "resource template"
        dropped = False
        for item in items:
            exposed = item.get(key)
            target = index.get(exposed) if isinstance(exposed, str) else None
            if target is None:
                kept.append(item)
                continue
            if self._hidden(item, f"{target[0]}.{target[1]}", what, action):
                dropped = True
                continue
            kept.append(item)
            kept_index[exposed] = target  # type: ignore[index]
        return (kept, kept_index) if dropped else (items, index)

    def _hidden(self, item: Item, ref: str, what: str, action: str) -> bool:
        """Whether a definition leaves the view (block, quarantine); a flag only logs."""
        d, hits = self.definition_hits(item)
        if not hits or d in self.approved:
            return False
        if action == "flag":
            log.warning("screen: %s %s looks poisoned (%s), stile_digest=%s", what, ref, ",".join(hits), d)
            return False
        if action == "quarantine":
            if d not in self._quarantined:
                log.warning("screen: %s %s quarantined (%s) until approved: stile_digest=%s",
                            what, ref, ",".join(hits), d)
            if len(self._quarantined) < 65_536:
                self._quarantined[d] = Quarantined(d, what, ref, hits)
        else:
            log.warning("screen: %s %s hidden (%s), stile_digest=%s", what, ref, ",".join(hits), d)
        return True

    # --- the policy ------------------------------------------------------------------------------
    async def __call__(self, ctx: CallContext, call_next: CallNext) -> Reply:
        if not self.enabled:
            return await call_next(ctx)
        actions = self._actions.get(ctx.virtual_server)
        if actions is None:
            return await call_next(ctx)
        desc_action, result_action = actions
        method = ctx.method
        if desc_action != "off" and (method in _LISTS or method in _ROUTED):
            view = ctx.view or self.views.view(ctx.virtual_server)
            if view is not None:
                if ctx.view is None and method in _LISTS:
                    view = await self.views.ensure_discovered(view)
                screened = self.screened(ctx.virtual_server, view, desc_action)
                ctx.stats.view = screened  # metrics label a hidden tool `(unknown)`, as for access control
                ctx = ctx.with_view(screened)
        reply = await call_next(ctx)
        if desc_action != "off" and method in _HANDSHAKES:
            return self._screen_instructions(ctx.virtual_server, reply, desc_action)
        if result_action == "off" or method != "tools/call":
            return reply
        hits = self._result_hits(reply)
        if hits:
            name = ctx.params.get("name")
            if result_action == "block":
                log.warning("screen: result of %s blocked (%s)", name, ",".join(hits))
                raise ScreenBlocked("tool result withheld: it looks like an injected instruction",
                                    data={"rule": "screen", "hits": list(hits)})
            log.warning("screen: result of %s looks injected (%s)", name, ",".join(hits))
        return reply

    def _screen_instructions(self, vs: str, reply: Reply, action: str) -> Reply:
        """A poisoned `instructions` text (the upstream's, passed through) is dropped unless the action is flag."""
        res = reply.get("result")
        text = res.get("instructions") if isinstance(res, dict) else None
        if not isinstance(res, dict) or not isinstance(text, str):
            return reply
        d = hashlib.sha256(text.encode()).hexdigest()[:32]
        hits = self._verdicts.get(d)
        if hits is None:
            hits = self.score_text(text, "description")
            self._verdicts[d] = hits
        if not hits or d in self.approved:
            return reply
        if action == "flag":
            log.warning("screen: instructions of %s look poisoned (%s), stile_digest=%s", vs, ",".join(hits), d)
            return reply
        log.warning("screen: instructions of %s withheld (%s), stile_digest=%s", vs, ",".join(hits), d)
        return {**reply, "result": {k: v for k, v in res.items() if k != "instructions"}}

    def _result_hits(self, reply: Reply) -> tuple[str, ...]:
        res = reply.get("result")
        content = res.get("content") if isinstance(res, dict) else None
        if not isinstance(content, list):
            return ()
        hits: tuple[str, ...] = ()
        for block in content:
            if not isinstance(block, dict):
                continue
            kind = block.get("type")
            if kind == "text":
                text = block.get("text")
            elif kind == "resource":  # an embedded resource's text
                res = block.get("resource")
                text = res.get("text") if isinstance(res, dict) else None
            else:
                continue
            if isinstance(text, str) and text:
                hits += self.score_text(text, "result")
        return hits


def _screen(deps: PolicyDeps, config: Any) -> Screen:
    cfg = config if isinstance(config, ScreenConfig) else ScreenConfig()
    screen = Screen(cfg, deps.views, list(deps.cfg.virtual_servers))
    if screen.enabled:
        deps.lifecycle.append(screen)  # how the admin API (frontends/admin.py) reaches the quarantine
    return screen


SCREEN = register(PolicyType("screen", _screen, ScreenConfig, order=55,
                             doc="poisoned tool descriptions and injected tool results (flag, block, quarantine)"))
