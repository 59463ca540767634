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
from typing import Any

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
    # extra admission for (upstream, original URI) reads, set when access control narrows the view
    resource_filter: Callable[[str, str], bool] | None = None

    def resolve_uri(self, uri: str) -> tuple[str, str] | None:
        hit = self.resource_index.get(uri)
        return hit if hit is not None else self.namer.split_uri(uri, self.upstreams)


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
                if key == "uri":
                    resource_index[exposed] = (up, uri)
                out.append({**item, key: exposed} if exposed != uri else item)
    live = {u for u in ups if inv.get(u, Inventory()).ok}
    for f in (rfilter,):
        problems.extend(f.unused(live))
    return View(name, ups, namer, tools, tool_index, prompts, prompt_index, resources, templates, problems,
                resource_index)


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
