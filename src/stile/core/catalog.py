"""Inventories (what each upstream offers) and views (what a virtual server exposes of them).

An `Inventory` is fetched once per upstream and refreshed on `list_changed`. A `View` is computed
from inventories and the virtual server's config: allow/deny globs on `upstream.name`, renames,
description overrides, name-spacing. Views are immutable and rebuilt on change, so the hot path
only does dict lookups.
"""

from __future__ import annotations

import fnmatch
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Protocol

from stile.config.model import GatewayConfig, Override, VirtualServerConfig
from stile.core.naming import EXPOSED_NAME, Namer
from stile.wire.headers import header_params

log = logging.getLogger("stile.catalog")
Item = dict[str, Any]


@dataclass(frozen=True)
class Inventory:
    tools: list[Item] = field(default_factory=list)
    resources: list[Item] = field(default_factory=list)
    templates: list[Item] = field(default_factory=list)
    prompts: list[Item] = field(default_factory=list)
    ok: bool = False
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Target:
    upstream: str
    original: str
    header_map: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class View:
    name: str
    upstreams: list[str]
    namer: Namer
    tools: list[Item]
    tool_index: dict[str, Target]
    prompts: list[Item]
    prompt_index: dict[str, Target]
    resources: list[Item]
    templates: list[Item]
    problems: list[str]
    # exposed URI -> (upstream, original URI) of every listed resource; an unprefixed view over several
    # upstreams cannot tell the owner from the URI itself
    resource_index: dict[str, tuple[str, str]] = field(default_factory=dict)
    # exposed URI template -> (upstream, original template) of every listed template
    template_index: dict[str, tuple[str, str]] = field(default_factory=dict)
    # extra admission for (upstream, original URI) reads, set when access control narrows the view
    resource_filter: Callable[[str, str], bool] | None = None
    # admission of methods the table does not classify (`passthrough_methods`), set by access control
    method_filter: Callable[[str], bool] | None = None
    # the virtual server's own allow/deny admission of `upstream.uri` refs
    resource_rule: Callable[[str], bool] | None = None

    def resolve_uri(self, uri: str) -> tuple[str, str] | None:
        """Which upstream a URI belongs to, by listing or by prefix (says nothing about visibility)."""
        hit = self.resource_index.get(uri)
        return hit if hit is not None else self.namer.split_uri(uri, self.upstreams)

    def visible_uri(self, uri: object) -> tuple[str, str] | None:
        """(upstream, original URI) of a URI this view may read: a listed resource, or one a listed
        template matches, admitted by the virtual server's rules and the caller's grants. Anything
        else (hidden or nonexistent alike) is None, and is never forwarded."""
        if not isinstance(uri, str):
            return None
        hit = self.resource_index.get(uri)
        if hit is None:
            hit = self.namer.split_uri(uri, self.upstreams)
            if hit is None or not any(up == hit[0] and template_regex(t).fullmatch(hit[1])
                                      for up, t in self.template_index.values()):
                return None
        if self.resource_rule is not None and not self.resource_rule(f"{hit[0]}.{hit[1]}"):
            return None
        if self.resource_filter is not None and not self.resource_filter(*hit):
            return None
        return hit

    def visible_template(self, exposed: object) -> tuple[str, str] | None:
        """(upstream, original template) of a template this view lists, else None."""
        return self.template_index.get(exposed) if isinstance(exposed, str) else None


_EXPANSION = re.compile(r"\{([+#./;?&]?)[^{}]*\}")
_OPERATOR_RE = {"": "[^/?#]*", "+": ".*", "#": ".*", "/": "(?:/[^/?#]*)*", ".": "(?:\\.[^/?#]*)*",
                ";": "(?:;[^/?#]*)*", "?": "(?:[?&][^#]*)?", "&": "(?:&[^#]*)?"}


@lru_cache(maxsize=4096)
def template_regex(template: str) -> re.Pattern[str]:
    """A regex matching the URIs an RFC 6570 template can expand to (by operator; values unchecked)."""
    out, pos = [], 0
    for m in _EXPANSION.finditer(template):
        out.append(re.escape(template[pos:m.start()]))
        out.append(_OPERATOR_RE[m.group(1)])
        pos = m.end()
    out.append(re.escape(template[pos:]))
    return re.compile("".join(out), re.DOTALL)


class ViewSource(Protocol):
    """The narrow interface policies and the router get to the catalogue (implemented by the Gateway)."""

    def view(self, name: str) -> View | None: ...

    async def ensure_discovered(self, view: View) -> View: ...


@lru_cache(maxsize=4096)
def _glob(pattern: str) -> re.Pattern[str]:
    return re.compile(fnmatch.translate(pattern))


def matches(ref: str, patterns: list[str]) -> bool:
    return any(_glob(p).match(ref) for p in patterns)


def upstreams_of(vs: VirtualServerConfig, cfg: GatewayConfig) -> list[str]:
    """Its `upstreams`, else the upstreams its allow lists name, else every upstream."""
    if vs.upstreams is not None:
        return list(vs.upstreams)
    patterns = [*(vs.allow_tools or []), *(vs.allow_resources or []), *(vs.allow_prompts or [])]
    if not patterns:
        return list(cfg.upstreams)
    named = {p.partition(".")[0] for p in patterns}
    return [u for u in cfg.upstreams if any(_glob(n).match(u) for n in named)]


def is_prefixed(vs: VirtualServerConfig, upstreams: list[str]) -> bool:
    if vs.prefix == "always":
        return True
    if vs.prefix == "never":
        return False
    return len(upstreams) > 1


class _Filter:
    def __init__(self, allow: list[str] | None, deny: list[str], what: str) -> None:
        self.allow, self.deny, self.what = allow, deny, what
        self.used: set[str] = set()

    def admits(self, ref: str) -> bool:
        if matches(ref, self.deny):
            return False
        if self.allow is None:
            return True
        hit = [p for p in self.allow if _glob(p).match(ref)]
        self.used.update(hit)
        return bool(hit)

    def unused(self, live_upstreams: set[str]) -> list[str]:
        out = []
        for p in self.allow or []:
            if p not in self.used and p.partition(".")[0] in live_upstreams:
                out.append(f"{self.what} allow entry {p!r} matches nothing its upstream offers")
        return out


def build_view(name: str, vs: VirtualServerConfig, cfg: GatewayConfig, inv: dict[str, Inventory]) -> View:
    ups = upstreams_of(vs, cfg)
    namer = Namer(is_prefixed(vs, ups), cfg.separator)
    problems: list[str] = []
    tools, tool_index = _named(ups, inv, "tools", _Filter(vs.allow_tools, vs.deny_tools, "tool"),
                               vs.tools, namer, problems)
    prompts, prompt_index = _named(ups, inv, "prompts", _Filter(vs.allow_prompts, vs.deny_prompts, "prompt"),
                                   vs.prompts, namer, problems)
    rfilter = _Filter(vs.allow_resources, vs.deny_resources, "resource")
    resources: list[Item] = []
    templates: list[Item] = []
    seen_uri: dict[str, str] = {}
    resource_index: dict[str, tuple[str, str]] = {}
    template_index: dict[str, tuple[str, str]] = {}
    for up in ups:
        got = inv.get(up, Inventory())
        for key, out, src in (("uri", resources, got.resources), ("uriTemplate", templates, got.templates)):
            for item in src:
                uri = item.get(key)
                if not isinstance(uri, str) or not rfilter.admits(f"{up}.{uri}"):
                    continue
                exposed = namer.uri(up, uri)
                if exposed in seen_uri:
                    problems.append(f"resource {exposed!r} offered by both {seen_uri[exposed]!r} and {up!r}; "
                                    f"keeping {seen_uri[exposed]!r}")
                    continue
                seen_uri[exposed] = up
                (resource_index if key == "uri" else template_index)[exposed] = (up, uri)
                out.append({**item, key: exposed} if exposed != uri else item)
    live = {u for u in ups if inv.get(u, Inventory()).ok}
    for f in (rfilter,):
        problems.extend(f.unused(live))
    return View(name, ups, namer, tools, tool_index, prompts, prompt_index, resources, templates, problems,
                resource_index, template_index, resource_rule=_resource_rule(vs))


def _resource_rule(vs: VirtualServerConfig) -> Callable[[str], bool] | None:
    allow, deny = vs.allow_resources, vs.deny_resources
    if allow is None and not deny:
        return None
    return lambda ref: not matches(ref, deny) and (allow is None or matches(ref, allow))


def _named(
    ups: list[str], inv: dict[str, Inventory], kind: str, filt: _Filter, overrides: dict[str, Override],
    namer: Namer, problems: list[str],
) -> tuple[list[Item], dict[str, Target]]:
    items: list[Item] = []
    index: dict[str, Target] = {}
    for up in ups:
        for item in getattr(inv.get(up, Inventory()), kind):
            orig = item.get("name")
            if not isinstance(orig, str):
                continue
            ref = f"{up}.{orig}"
            if not filt.admits(ref):
                continue
            ov = overrides.get(ref)
            exposed = ov.name if ov is not None and ov.name else namer.name(up, orig)
            if exposed in index:
                other = index[exposed]
                problems.append(f"{kind[:-1]} name {exposed!r} collides: {other.upstream}.{other.original} "
                                f"and {ref}; keeping {other.upstream}.{other.original}")
                continue
            if kind == "tools" and not EXPOSED_NAME.match(exposed):
                problems.append(f"tool {ref} is exposed as {exposed!r}, which LLM APIs reject "
                                f"(want {EXPOSED_NAME.pattern}); rename it under `tools:`")
            new = dict(item)
            new["name"] = exposed
            if ov is not None and ov.description is not None:
                new["description"] = ov.description
            items.append(new if new != item else item)
            hmap = header_params(item) if kind == "tools" else {}
            ann = item.get("annotations")
            index[exposed] = Target(up, orig, hmap, ann if isinstance(ann, dict) else {})
    live = {u for u in ups if inv.get(u, Inventory()).ok}
    problems.extend(filt.unused(live))
    return items, index
