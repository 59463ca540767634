"""The `validate` policy (order 40): tool arguments against `inputSchema`, results against `outputSchema`.

Config (`policies.validate`), a mode each way, per virtual server:

    policies:
      validate:
        input: enforce          # enforce | warn | off   (default enforce)
        output: warn            # enforce | warn | off   (default warn)
        virtual_servers: {legacy-crm: {input: warn}, trusted: {output: enforce}}

Input: before the upstream is called, `arguments` (absent: `{}`) must satisfy the tool's `inputSchema`;
`enforce` answers JSON-RPC -32602 whose message names the path of the first error
(`arguments.limit: -1 is less than the minimum of 0`, `data.path`) and forwards nothing; `warn` logs
once per tool and schema and forwards. Output: a complete, non-error result of a tool with an
`outputSchema` must carry a conforming `structuredContent`; `enforce` replaces a violating result with
a tool error result (`isError: true`, the path in its text) so the caller's model sees why; `warn` logs.

Why these defaults: a well-behaved client sends arguments its tool's schema admits, so enforcing input
changes nothing for it and spares upstreams malformed calls; an upstream whose output drifts from its
own schema is the upstream's bug, so output is only logged unless a virtual server opts in.

Schemas are compiled with `jsonschema_rs` (offline: a remote `$ref` is never fetched; `format` is an
annotation, as in draft 2020-12), once per distinct schema (keyed by its SHA-256), and looked up per
view (rebuilt views get new lookups). A schema that does not compile is logged once and that tool is
not validated (fail open: the upstream still validates its own input, and a tool should not become
unusable because its schema uses a dialect or a reference we cannot load).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import jsonschema_rs
import orjson
from pydantic import BaseModel, ConfigDict, Field

from stile.core.context import CallContext, CallNext, Reply
from stile.policies.registry import PolicyDeps, PolicyType, register
from stile.wire.errors import InvalidParams

if TYPE_CHECKING:
    from stile.core.catalog import View, ViewSource

log = logging.getLogger("stile.validate")
Mode = Literal["enforce", "warn", "off"]
MAX_MESSAGE = 300  # characters of an error message (it may quote the offending value)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ValidateModes(_Strict):
    input: Mode | None = None
    output: Mode | None = None


class ValidateConfig(_Strict):
    input: Mode = "enforce"
    output: Mode = "warn"
    virtual_servers: dict[str, ValidateModes] = Field(default_factory=dict)


class Compiled:
    """A compiled schema; `first_error` names the JSON path under `root` of the first violation."""

    __slots__ = ("is_valid", "validator")

    def __init__(self, validator: Any) -> None:
        self.validator = validator
        self.is_valid = validator.is_valid

    def first_error(self, value: Any, root: str) -> tuple[str, str]:
        for err in self.validator.iter_errors(value):
            path = json_path(root, err.instance_path)
            message = err.message if len(err.message) <= MAX_MESSAGE else err.message[:MAX_MESSAGE] + "..."
            return path, f"{path}: {message}"
        return root, f"{root}: invalid"


def json_path(root: str, parts: Any) -> str:
    out = [root]
    for p in parts:
        if isinstance(p, int):
            out.append(f"[{p}]")
        elif isinstance(p, str) and p.isidentifier():
            out.append(f".{p}")
        else:
            out.append(f"[{orjson.dumps(p).decode()}]")
    return "".join(out)


class SchemaCache:
    """Compiled validators by the SHA-256 of the schema's canonical JSON; None: did not compile (logged once)."""

    def __init__(self) -> None:
        self._by_hash: dict[str, Compiled | None] = {}

    def get(self, schema: Any, what: str) -> Compiled | None:
        if not isinstance(schema, (dict, bool)):
            return None
        try:
            key = hashlib.sha256(orjson.dumps(schema, option=orjson.OPT_SORT_KEYS)).hexdigest()
        except (TypeError, orjson.JSONEncodeError):
            return None
        if key in self._by_hash:
            return self._by_hash[key]
        compiled: Compiled | None
        try:
            compiled = Compiled(jsonschema_rs.validator_for(schema, validate_formats=False, offline=True))
        except (ValueError, jsonschema_rs.ReferencingError) as exc:
            log.warning("validate: the %s does not compile; not validating it (%s)", what,
                        str(exc).splitlines()[0][:200])
            compiled = None
        if len(self._by_hash) > 16384:
            self._by_hash.clear()
        self._by_hash[key] = compiled
        return compiled


@dataclass(frozen=True, slots=True)
class ToolSchemas:
    input: Compiled | None
    output: Compiled | None


_NONE = ToolSchemas(None, None)


class _ViewTools:
    """The tools of one view by exposed name, their schemas compiled on first use."""

    def __init__(self, view: View, cache: SchemaCache) -> None:
        self.view = view  # kept so its id is not reused while cached
        self.items = {t.get("name"): t for t in view.tools}
        self.cache = cache
        self.schemas: dict[str, ToolSchemas] = {}

    def get(self, name: str) -> ToolSchemas:
        got = self.schemas.get(name)
        if got is None:
            item = self.items.get(name)
            if item is None:
                return _NONE
            got = ToolSchemas(self.cache.get(item.get("inputSchema"), f"inputSchema of tool {name!r}"),
                              self.cache.get(item.get("outputSchema"), f"outputSchema of tool {name!r}"))
            self.schemas[name] = got
        return got


class Validate:
    def __init__(self, cfg: ValidateConfig, servers: list[str], views: ViewSource) -> None:
        self.views = views
        self.cache = SchemaCache()
        self.modes: dict[str, tuple[Mode, Mode]] = {}
        for vs in servers:
            own = cfg.virtual_servers.get(vs, ValidateModes())
            modes = (own.input or cfg.input, own.output or cfg.output)
            if modes != ("off", "off"):
                self.modes[vs] = modes
        self._views: dict[int, _ViewTools] = {}
        self._warned: set[tuple[str, str, int]] = set()

    def schemas(self, view: View, name: str) -> ToolSchemas:
        tools = self._views.get(id(view))
        if tools is None or tools.view is not view:
            if len(self._views) > 1024:
                self._views.clear()
            tools = self._views[id(view)] = _ViewTools(view, self.cache)
        return tools.get(name)

    def _warn_once(self, vs: str, name: str, which: str, compiled: Compiled, message: str) -> None:
        key = (vs, f"{name}/{which}", id(compiled))
        if key not in self._warned and len(self._warned) < 4096:
            self._warned.add(key)
            log.warning("validate (warn): %s of tool %r on %s: %s (logged once per tool and schema)", which,
                        name, vs, message)

    async def __call__(self, ctx: CallContext, call_next: CallNext) -> Reply:
        if ctx.method != "tools/call":
            return await call_next(ctx)
        modes = self.modes.get(ctx.virtual_server)
        name = ctx.params.get("name")
        view = ctx.view or self.views.view(ctx.virtual_server)
        if modes is None or view is None or not isinstance(name, str) or name not in view.tool_index:
            return await call_next(ctx)  # unknown tools: the router answers
        tool = self.schemas(view, name)
        in_mode, out_mode = modes
        if tool.input is not None and in_mode != "off":
            args = ctx.params.get("arguments")
            if args is None:
                args = {}
            if not tool.input.is_valid(args):
                path, message = tool.input.first_error(args, "arguments")
                if in_mode == "enforce":
                    raise InvalidParams(message, data={"tool": name, "path": path})
                self._warn_once(ctx.virtual_server, name, "arguments", tool.input, message)
        reply = await call_next(ctx)
        if tool.output is None or out_mode == "off":
            return reply
        res = reply.get("result")
        if (not isinstance(res, dict) or res.get("isError") is True
                or res.get("resultType", "complete") != "complete"
                or ("content" not in res and "structuredContent" not in res)):  # not a tool result (a task)
            return reply
        content = res.get("structuredContent")
        if content is None:
            message = "structuredContent: missing (the tool declares an outputSchema)"
        elif tool.output.is_valid(content):
            return reply
        else:
            message = tool.output.first_error(content, "structuredContent")[1]
        if out_mode == "warn":
            self._warn_once(ctx.virtual_server, name, "output", tool.output, message)
            return reply
        log.info("validate: replaced a result of tool %r on %s that does not match its outputSchema: %s",
                 name, ctx.virtual_server, message)
        out: dict[str, Any] = {k: res[k] for k in ("resultType", "ttlMs", "cacheScope") if k in res}
        out["content"] = [{"type": "text",
                           "text": f"The tool's result does not match its outputSchema: {message}"}]
        out["isError"] = True
        return {"result": out}


def _validate(deps: PolicyDeps, config: ValidateConfig) -> Validate:
    for name in config.virtual_servers:
        if name not in deps.cfg.virtual_servers:
            log.warning("policies.validate.virtual_servers.%s: no such virtual server (ignored)", name)
    return Validate(config, list(deps.cfg.virtual_servers), deps.views)


VALIDATE = register(PolicyType("validate", _validate, ValidateConfig, order=40,
                               doc="tool arguments against inputSchema, results against outputSchema"))
