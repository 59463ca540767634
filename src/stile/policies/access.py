"""Tool-level access control: a principal sees the intersection of the view and its roles' grants.

Roles grant virtual servers and `upstream.name` globs (allow and deny; deny wins; default deny);
`read_only` roles only get tools annotated `readOnlyHint: true`. The narrowed view is computed once per
(view, roles) and cached until the view is rebuilt, so a cached decision costs a dict lookup. Because
the router answers from the narrowed view, hidden tools are absent from lists and calling one answers
exactly like an unknown tool (no existence leak).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from stile.config.identity import RoleConfig
from stile.core.catalog import Target, View, matches
from stile.core.context import CallContext, CallNext, Reply
from stile.wire.errors import ClientError

if TYPE_CHECKING:
    from stile.config.model import GatewayConfig
    from stile.core.catalog import ViewSource

LIST_METHODS = frozenset({"tools/list", "prompts/list", "resources/list", "resources/templates/list"})


class Forbidden(ClientError):
    """The principal holds no role for this virtual server (HTTP 403)."""

    jsonrpc_code = -32600
    http_status = 403


def _read_only(item: Mapping[str, Any]) -> bool:
    ann = item.get("annotations")
    return isinstance(ann, dict) and ann.get("readOnlyHint") is True


class _Grant:
    def __init__(self, roles: list[RoleConfig]) -> None:
        self.roles = roles

    def tool(self, ref: str, item: Mapping[str, Any]) -> bool:
        if any(matches(ref, r.deny_tools) for r in self.roles):
            return False
        return any(matches(ref, r.allow_tools) and (not r.read_only or _read_only(item)) for r in self.roles)

    def prompt(self, ref: str) -> bool:
        if any(matches(ref, r.deny_prompts) for r in self.roles):
            return False
        return any(matches(ref, r.allow_prompts) for r in self.roles)

    def resource(self, upstream: str, uri: str) -> bool:
        ref = f"{upstream}.{uri}"
        if any(matches(ref, r.deny_resources) for r in self.roles):
            return False
        return any(matches(ref, r.allow_resources) for r in self.roles)

    def method(self, method: str) -> bool:
        return any(matches(method, r.allow_methods) for r in self.roles)


def narrow(view: View, roles: list[RoleConfig]) -> View:
    """The part of `view` the roles grant; everything else is absent, exactly as if it did not exist."""
    grant = _Grant(roles)
    tools, tool_index = _keep(view.tools, view.tool_index, lambda ref, item: grant.tool(ref, item))
    prompts, prompt_index = _keep(view.prompts, view.prompt_index, lambda ref, item: grant.prompt(ref))
    resources = [r for r in view.resources if _resource_ok(view, grant, r.get("uri"))]
    template_index = {k: v for k, v in view.template_index.items() if grant.resource(*v)}
    templates = [t for t in view.templates if t.get("uriTemplate") in template_index]
    index = {k: v for k, v in view.resource_index.items() if grant.resource(*v)}
    return replace(view, tools=tools, tool_index=tool_index, prompts=prompts, prompt_index=prompt_index,
                   resources=resources, templates=templates, resource_index=index, template_index=template_index,
                   resource_filter=grant.resource, method_filter=grant.method)


def _resource_ok(view: View, grant: _Grant, uri: Any) -> bool:
    hit = view.resolve_uri(uri) if isinstance(uri, str) else None
    return hit is not None and grant.resource(*hit)


def _keep(items: list[dict[str, Any]], index: dict[str, Target], ok: Any) -> tuple[list[dict[str, Any]],
                                                                                 dict[str, Target]]:
    kept_items: list[dict[str, Any]] = []
    kept_index: dict[str, Target] = {}
    for item in items:
        target = index.get(item.get("name", ""))
        if target is not None and ok(f"{target.upstream}.{target.original}", item):
            kept_items.append(item)
            kept_index[item["name"]] = target
    return kept_items, kept_index


class AccessControl:
    """The pipeline policy: narrows the view for authenticated principals; anonymous views pass through."""

    def __init__(self, cfg: GatewayConfig, views: ViewSource) -> None:
        self.cfg = cfg
        self.views = views
        self._cache: dict[tuple[str, tuple[str, ...]], tuple[View, View]] = {}  # -> (source view, narrowed)

    def roles_for(self, virtual_server: str, role_names: tuple[str, ...]) -> list[RoleConfig]:
        roles = self.cfg.roles
        out = []
        for name in role_names:
            role = roles.get(name)
            if role is not None and (role.virtual_servers is None or virtual_server in role.virtual_servers):
                out.append(role)
        return out

    async def __call__(self, ctx: CallContext, call_next: CallNext) -> Reply:
        vs = self.cfg.virtual_servers.get(ctx.virtual_server)
        if vs is None or vs.auth == "none":
            return await call_next(ctx)
        view = self.views.view(ctx.virtual_server)
        if view is None:
            return await call_next(ctx)
        if ctx.method in LIST_METHODS:
            view = await self.views.ensure_discovered(view)
        key = (ctx.virtual_server, ctx.principal.roles)
        cached = self._cache.get(key)
        if cached is not None and cached[0] is view:
            ctx.stats.view = cached[1]  # what the caller could see, for metrics labels (Observe runs first)
            return await call_next(ctx.with_view(cached[1]))
        roles = self.roles_for(ctx.virtual_server, ctx.principal.roles)
        if not roles:
            raise Forbidden(f"no role grants access to virtual server {ctx.virtual_server!r}")
        if len(self._cache) > 4096:
            self._cache.clear()
        narrowed = narrow(view, roles)
        self._cache[key] = (view, narrowed)
        ctx.stats.view = narrowed
        return await call_next(ctx.with_view(narrowed))
