"""The `redact` policy (order 50): PII and secrets in results masked, or the whole result withheld.

Config (`policies.redact`; nothing configured: no detectors, the policy passes every reply through):

    policies:
      redact:
        detectors: [email, phone, card, iban, ssn, ip, aws_key, github_token, slack_token, jwt,
                    private_key, high_entropy]        # or [all]
        action: mask                                  # mask: [REDACTED:<detector>] | block: -32010
        custom: [{name: ticket, pattern: "TCK-[0-9]{6}"}]
        virtual_servers: {public: {action: block}, internal: {detectors: []}}   # per-server overrides
        roles: {auditor: {exempt: true}}              # callers holding an exempt role see results unmasked

What is scanned: results of `tools/call` (text content, embedded resource text, every string of
`structuredContent`, and for `high_entropy` the whole value of a secret-named field), `resources/read`
(text contents), `prompts/get` (message content) and `completion/complete` (the values); and what an
upstream sends the client while one of those calls runs: progress messages, log data, the prompts of
sampling and elicitation requests (legacy clients get them on the stream; 2026-07-28 clients in an
`input_required` result's `inputRequests`). Those mid-call messages are always masked, also under `block`
(withholding them would only break the call). Blobs, images, audio, URIs and `_meta` are not scanned.
A role is exempt only where it applies (its `virtual_servers`). Because `validate` (order 40) is inner,
`structuredContent` is checked against `outputSchema` before it is masked.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from stile.core.context import CallContext, CallNext, ClientChannel, Reply
from stile.policies.detectors import BUILTIN_NAMES, Scanner, custom, scanner, secret_key, secret_value
from stile.policies.registry import PolicyDeps, PolicyType, register
from stile.policies.rules import PolicyDenied
from stile.wire.jsonrpc import Message

if TYPE_CHECKING:
    from stile.config.model import GatewayConfig

log = logging.getLogger("stile.redact")
Action = Literal["mask", "block"]
_METHODS = frozenset({"tools/call", "resources/read", "prompts/get", "completion/complete"})
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
MAX_DEPTH = 64


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CustomDetector(_Strict):
    name: str
    pattern: str

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.match(value) or value in BUILTIN_NAMES or value == "all":
            raise ValueError(f"custom detector name {value!r} must match {_NAME.pattern} and not be a built-in name")
        return value

    @field_validator("pattern")
    @classmethod
    def _pattern(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"pattern {value!r} is not a valid regular expression: {exc}") from None
        if re.compile(value).fullmatch(""):
            raise ValueError(f"pattern {value!r} matches the empty string")
        return value


def _check_names(value: list[str] | None) -> list[str] | None:
    if value is None:
        return None
    unknown = [n for n in value if n not in BUILTIN_NAMES and n != "all"]
    if unknown:
        raise ValueError(f"unknown detector(s) {unknown} (known: {list(BUILTIN_NAMES)} or 'all')")
    return list(BUILTIN_NAMES) if "all" in value else value


class RedactOverride(_Strict):
    detectors: list[str] | None = None  # None: the top-level list
    action: Action | None = None
    custom: bool = True  # whether the top-level custom detectors apply here

    @field_validator("detectors")
    @classmethod
    def _names(cls, value: list[str] | None) -> list[str] | None:
        return _check_names(value)


class RoleRedaction(_Strict):
    exempt: bool = False


class RedactConfig(_Strict):
    detectors: list[str] = Field(default_factory=list)
    action: Action = "mask"
    custom: list[CustomDetector] = Field(default_factory=list)
    virtual_servers: dict[str, RedactOverride] = Field(default_factory=dict)
    roles: dict[str, RoleRedaction] = Field(default_factory=dict)

    @field_validator("detectors")
    @classmethod
    def _names(cls, value: list[str]) -> list[str]:
        return _check_names(value) or []

    @model_validator(mode="after")
    def _unique_custom(self) -> RedactConfig:
        names = [c.name for c in self.custom]
        if len(set(names)) != len(names):
            raise ValueError("custom detector names must be unique")
        return self


class _Walk:
    """One reply's scan: masks strings in place of copies, remembers which detectors hit."""

    def __init__(self, scan: Scanner) -> None:
        self.scan = scan
        self.hits: list[str] = []

    def text(self, value: str) -> str:
        masked, hits = self.scan.mask(value)
        if hits:
            self.hits.extend(hits)
        return masked

    def data(self, value: Any, depth: int = 0) -> Any:
        """Every string of a JSON value (structuredContent); secret-named fields by their whole value."""
        if depth > MAX_DEPTH:
            return value
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, list):
            return [self.data(v, depth + 1) for v in value]
        if isinstance(value, dict):
            out = {}
            for k, v in value.items():
                if (self.scan.entropy and isinstance(v, str) and isinstance(k, str) and secret_key(k)
                        and secret_value(k, v)):
                    self.hits.append("high_entropy")
                    out[k] = "[REDACTED:high_entropy]"
                else:
                    out[k] = self.data(v, depth + 1)
            return out
        return value

    def block(self, item: Any) -> Any:
        """A content block: text, or the text of an embedded resource."""
        if not isinstance(item, dict):
            return item
        kind = item.get("type")
        if kind == "text" and isinstance(item.get("text"), str):
            return {**item, "text": self.text(item["text"])}
        if kind == "resource" and isinstance(item.get("resource"), dict):
            return {**item, "resource": self.contents(item["resource"])}
        return item

    def contents(self, item: Any) -> Any:
        if isinstance(item, dict) and isinstance(item.get("text"), str):
            return {**item, "text": self.text(item["text"])}
        return item

    def sampling_message(self, msg: Any) -> Any:
        if not isinstance(msg, dict):
            return msg
        content = msg.get("content")
        if isinstance(content, list):
            return {**msg, "content": [self.block(c) for c in content]}
        return {**msg, "content": self.block(content)}

    def message_params(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        """What an upstream sends the client mid-call: progress text, log data, sampling and elicitation prompts."""
        out = dict(params)
        if method == "notifications/progress" and isinstance(params.get("message"), str):
            out["message"] = self.text(params["message"])
        elif method == "notifications/message" and "data" in params:
            out["data"] = self.data(params["data"])
        elif method == "sampling/createMessage":
            if isinstance(params.get("messages"), list):
                out["messages"] = [self.sampling_message(m) for m in params["messages"]]
            if isinstance(params.get("systemPrompt"), str):
                out["systemPrompt"] = self.text(params["systemPrompt"])
        elif method == "elicitation/create" and isinstance(params.get("message"), str):
            out["message"] = self.text(params["message"])
        return out

    def input_requests(self, asks: dict[str, Any]) -> dict[str, Any]:
        """An `input_required` result's requests (sampling, elicitation asked of a 2026-07-28 client)."""
        return {key: {**ask, "params": self.message_params(ask["method"], ask["params"])}
                if isinstance(ask, dict) and isinstance(ask.get("method"), str) and isinstance(ask.get("params"), dict)
                else ask for key, ask in asks.items()}

    def result(self, res: dict[str, Any]) -> dict[str, Any]:
        out = dict(res)
        if isinstance(res.get("content"), list):
            out["content"] = [self.block(c) for c in res["content"]]
        if "structuredContent" in res:
            out["structuredContent"] = self.data(res["structuredContent"])
        if isinstance(res.get("contents"), list):
            out["contents"] = [self.contents(c) for c in res["contents"]]
        if isinstance(res.get("messages"), list):
            out["messages"] = [{**m, "content": self.block(m.get("content"))} if isinstance(m, dict) else m
                               for m in res["messages"]]
        completion = res.get("completion")
        if isinstance(completion, dict) and isinstance(completion.get("values"), list):
            out["completion"] = {**completion, "values": [self.text(v) if isinstance(v, str) else v
                                                          for v in completion["values"]]}
        return out


class RedactingChannel:
    """The client channel of a call whose results are redacted: mid-call messages are masked on their way."""

    def __init__(self, inner: ClientChannel, scan: Scanner) -> None:
        self.inner = inner
        self.scan = scan

    @property
    def can_request(self) -> bool:
        return self.inner.can_request

    async def notify(self, msg: Message) -> None:
        params = msg.get("params")
        method = msg.get("method")
        if isinstance(params, dict) and isinstance(method, str):
            walk = _Walk(self.scan)
            masked = walk.message_params(method, params)
            if walk.hits:
                msg = {**msg, "params": masked}
        await self.inner.notify(msg)

    async def request(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        return await self.inner.request(method, _Walk(self.scan).message_params(method, params))


class Redact:
    def __init__(self, cfg: RedactConfig, gateway: GatewayConfig) -> None:
        self.roles = gateway.roles
        self.exempt = frozenset(name for name, r in cfg.roles.items() if r.exempt)
        extra = [custom(c.name, c.pattern) for c in cfg.custom]
        self.by_server: dict[str, tuple[Scanner, Action]] = {}
        for vs in gateway.virtual_servers:
            over = cfg.virtual_servers.get(vs, RedactOverride())
            names = over.detectors if over.detectors is not None else cfg.detectors
            detectors = scanner(names, extra if over.custom else ())
            if detectors.detectors:
                self.by_server[vs] = (detectors, over.action or cfg.action)
        self._exempt_cache: dict[tuple[str, tuple[str, ...]], bool] = {}

    def exempted(self, vs: str, roles: tuple[str, ...]) -> bool:
        key = (vs, roles)
        hit = self._exempt_cache.get(key)
        if hit is None:
            hit = False
            for name in roles:
                role = self.roles.get(name)
                if name in self.exempt and role is not None and (role.virtual_servers is None
                                                                 or vs in role.virtual_servers):
                    hit = True
            if len(self._exempt_cache) > 4096:
                self._exempt_cache.clear()
            self._exempt_cache[key] = hit
        return hit

    async def __call__(self, ctx: CallContext, call_next: CallNext) -> Reply:
        setting = self.by_server.get(ctx.virtual_server)
        if setting is None or ctx.method not in _METHODS or (
                self.exempt and self.exempted(ctx.virtual_server, ctx.principal.roles)):
            return await call_next(ctx)
        reply = await call_next(ctx.with_channel(RedactingChannel(ctx.channel, setting[0])))
        res = reply.get("result")
        if not isinstance(res, dict):
            return reply
        if isinstance(res.get("inputRequests"), dict):  # masked, never withheld (see the module docstring)
            asks = _Walk(setting[0])
            res = {**res, "inputRequests": asks.input_requests(res["inputRequests"])}
            if asks.hits:
                reply = {**reply, "result": res}
        walk = _Walk(setting[0])
        masked = walk.result(res)
        if not walk.hits:
            return reply
        found = sorted(set(walk.hits))
        if setting[1] == "block":
            log.info("redact: withheld a %s result on %s (%s)", ctx.method, ctx.virtual_server, ", ".join(found))
            raise PolicyDenied("result withheld by policy: it contains " + ", ".join(found),
                               data={"detectors": found})
        return {**reply, "result": masked}


def _redact(deps: PolicyDeps, config: RedactConfig) -> Redact:
    for name in config.virtual_servers:
        if name not in deps.cfg.virtual_servers:
            log.warning("policies.redact.virtual_servers.%s: no such virtual server (ignored)", name)
    for name in config.roles:
        if name not in deps.cfg.roles:
            log.warning("policies.redact.roles.%s: no such role (ignored)", name)
    return Redact(config, deps.cfg)


REDACT = register(PolicyType("redact", _redact, RedactConfig, doc="PII and secrets in results masked or blocked",
                             order=50))
