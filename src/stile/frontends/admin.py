"""The JSON admin API under /admin: audit search and usage reports.

- ``GET /admin/audit?agent=&user=&tool=&upstream=&outcome=&server=&since=&until=&limit=`` ->
  ``{"events": [...]}``: the newest `limit` (default 100, at most 10000) matching events, oldest first.
- ``GET /admin/usage?by=agent|user|tool|upstream&since=24h&until=`` -> ``{"rows": [...]}``.

- ``GET /admin/screen/quarantined`` -> ``{"quarantined": [{digest, kind, ref, hits}, ...]}``: the definitions
  the screen (`policies.screen`, `descriptions: quarantine`) hides until reviewed, in this process.
- ``POST /admin/screen/approve?digest=D`` -> ``{"approved": D, "ref": ..., "replicas": N, "persist": ...}``:
  releases one quarantined definition in this process and, over a shared bus, in the N other replicas
  (their clients are told the lists changed too); 404 when no definition with that digest is quarantined.
  To keep it across restarts and for replicas started later, list the digest under
  `policies.screen.approved` (the reply says so). 404 for both when no virtual server screens descriptions.

Access: 404 unless `admin.enabled`; the caller authenticates like an MCP client (API key or bearer
token; a token's audience is the base URL + "/admin") and must hold one of `admin.roles`: 401 with a
Bearer challenge otherwise, 403 without the role. Bad parameters answer 400 naming the parameter. The
source is the gateway's state store when `audit.store` is on, else its `audit.jsonl` file.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol
from urllib.parse import parse_qsl

from stile.config.model import GatewayConfig
from stile.core.context import Principal
from stile.frontends.asgi import Scope, Send, send_json
from stile.identity.authn import Authenticator, AuthRequired
from stile.observe.audit import AuditLog
from stile.observe.audit_query import (
    GROUP_BY,
    Filter,
    NoTrail,
    QueryError,
    Source,
    audit_source,
    check_outcomes,
    parse_since,
    search,
    usage,
)

log = logging.getLogger("stile.admin")
MAX_LIMIT = 10_000
MAX_EPOCH = 253_402_300_799.0  # 9999-12-31T23:59:59Z; since/until beyond +-this are refused
_AUDIT_PARAMS = {"agent", "user", "tool", "upstream", "outcome", "server", "since", "until", "limit"}
_USAGE_PARAMS = {"by", "since", "until"}
_SCREEN_PATHS = {"/admin/screen/quarantined": "GET", "/admin/screen/approve": "POST"}
_DIGEST = re.compile(r"[0-9a-f]{32}")


class Quarantine(Protocol):
    """What the admin API needs of the screen policy (`stile.policies.screen.Screen`)."""

    def quarantine_entries(self) -> Sequence[Any]: ...

    def approve(self, item_digest: str) -> bool: ...


class BadParam(Exception):
    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name
        self.message = message


class AdminApi:
    def __init__(self, cfg: GatewayConfig, audit: AuditLog, state_url: str | None, authn: Authenticator,
                 base_url: Callable[[dict[str, str]], str | None], screen: Quarantine | None = None,
                 on_release: Callable[[str], Awaitable[int]] | None = None) -> None:
        self.cfg = cfg
        self.screen = screen
        self.on_release = on_release  # after an approval: tell clients and other replicas; how many replicas heard
        self.audit = audit
        self.state_url = state_url
        self.authn = authn
        self.base_url = base_url

    def source(self) -> Source | None:
        return audit_source(self.cfg.audit, self.state_url)

    async def handle(self, scope: Scope, headers: dict[str, str], send: Send) -> None:
        admin = self.cfg.admin
        if not admin.enabled:
            await send_json(send, 404, {"error": "not_found"})
            return
        try:
            base = self.base_url(headers)
            principal = await self.authn.authenticate(headers, base and f"{base}/admin")
        except AuthRequired as exc:
            self._audit_access(scope, headers, "unauthenticated", exc.message)
            challenge = 'Bearer realm="stile-admin"' + (', error="invalid_token"' if headers.get("authorization")
                                                        else "")
            await send_json(send, 401, {"error": "unauthorized", "message": exc.message},
                            [(b"www-authenticate", challenge.encode())])
            return
        if not set(principal.roles) & set(admin.roles):
            self._audit_access(scope, headers, "denied", f"no admin role (needs one of {admin.roles})", principal)
            await send_json(send, 403, {"error": "forbidden", "message": f"needs one of the roles {admin.roles}"})
            return
        path: str = scope["path"]
        if path in _SCREEN_PATHS:
            await self._screen(scope, headers, send, principal)
            return
        if path not in ("/admin/audit", "/admin/usage"):
            await send_json(send, 404, {"error": "not_found", "message": f"no admin endpoint at {path}"})
            return
        if scope["method"] != "GET":
            await send_json(send, 405, {"error": "method_not_allowed"}, [(b"allow", b"GET")])
            return
        source = self.source()
        if source is None:
            await send_json(send, 404, {"error": "not_found", "message": "no audit store configured"})
            return
        params: dict[str, str] = {}
        try:
            params = _params(scope, _AUDIT_PARAMS if path == "/admin/audit" else _USAGE_PARAMS)
            body = await (self._audit(source, params) if path == "/admin/audit" else self._usage(source, params))
        except NoTrail:  # the state database or JSONL file is created by the first write: nothing yet
            body = {"events": []} if path == "/admin/audit" else {"by": params.get("by", "tool"), "rows": []}
        except BadParam as exc:
            await send_json(send, 400, {"error": "bad_request", "parameter": exc.name, "message": exc.message})
            return
        except QueryError as exc:
            log.warning("admin %s: %s", path, exc)
            await send_json(send, 503, {"error": "unavailable", "message": "the audit store cannot be read"})
            return
        self._audit_access(scope, headers, "ok", None, principal)  # reading the trail is itself on the trail
        await send_json(send, 200, body)

    def _audit_access(self, scope: Scope, headers: dict[str, str], outcome: str, reason: str | None,
                      principal: Principal | None = None) -> None:
        if self.audit.enabled:
            query = scope.get("query_string", b"").decode("latin-1")[:1024]
            self.audit.record_http("(admin)", headers, outcome, reason or query,
                                   method=f"{str(scope.get('method', 'GET'))[:16]} {scope['path']}",
                                   principal=principal)

    async def _screen(self, scope: Scope, headers: dict[str, str], send: Send, principal: Principal) -> None:
        path: str = scope["path"]
        want = _SCREEN_PATHS[path]
        if scope["method"] != want:
            await send_json(send, 405, {"error": "method_not_allowed"}, [(b"allow", want.encode())])
            return
        if self.screen is None:
            await send_json(send, 404, {"error": "not_found", "message": "no virtual server screens descriptions"})
            return
        try:
            params = _params(scope, {"digest"} if want == "POST" else set())
        except BadParam as exc:
            await send_json(send, 400, {"error": "bad_request", "parameter": exc.name, "message": exc.message})
            return
        entries = {e.digest: e for e in self.screen.quarantine_entries()}
        if want == "GET":
            self._audit_access(scope, headers, "ok", None, principal)
            await send_json(send, 200, {"quarantined": [e.as_dict() for e in entries.values()]})
            return
        item_digest = params.get("digest", "")
        if not _DIGEST.fullmatch(item_digest):
            await send_json(send, 400, {"error": "bad_request", "parameter": "digest",
                                        "message": "digest must be the 32 lowercase hex digits stile screen prints"})
            return
        entry = entries.get(item_digest)
        if entry is None:
            self._audit_access(scope, headers, "denied", f"screen approve {item_digest}: not quarantined", principal)
            await send_json(send, 404, {"error": "not_found", "message": "no quarantined definition has that digest"})
            return
        self.screen.approve(item_digest)
        self._audit_access(scope, headers, "ok", f"screen approve {item_digest} ({entry.kind} {entry.ref})", principal)
        log.warning("screen: %s %s approved by %s via the admin API, stile_digest=%s", entry.kind, entry.ref,
                    principal.agent or principal.user or "(admin)", item_digest)
        others = await self.on_release(item_digest) if self.on_release is not None else 0
        where = f"in this process and {others} other replica(s) sharing its bus" if others else "in this process only"
        await send_json(send, 200, {"approved": item_digest, "kind": entry.kind, "ref": entry.ref, "replicas": others,
                                    "persist": f"released {where}: add the digest to policies.screen.approved "
                                               "to keep it across restarts and for replicas started later"})

    async def _audit(self, source: Source, params: dict[str, str]) -> dict[str, Any]:
        raw_limit = params.get("limit", "100")
        # ASCII digits only: str.isdigit() also passes '²' and '٣', which int() then refuses or reads
        if not (raw_limit.isascii() and raw_limit.isdigit() and len(raw_limit) <= 6
                and 1 <= int(raw_limit) <= MAX_LIMIT):
            raise BadParam("limit", f"limit must be a whole number from 1 to {MAX_LIMIT}")
        try:
            check_outcomes(params.get("outcome", ""))
        except ValueError as exc:
            raise BadParam("outcome", str(exc)) from None
        flt = Filter(agent=params.get("agent"), user=params.get("user"), tool=params.get("tool"),
                     upstream=params.get("upstream"), outcome=params.get("outcome"),
                     virtual_server=params.get("server"), since=_time(params, "since"), until=_time(params, "until"),
                     limit=int(raw_limit))
        return {"events": await search(source, flt)}

    async def _usage(self, source: Source, params: dict[str, str]) -> dict[str, Any]:
        by = next((g for g in GROUP_BY if g == params.get("by", "tool")), None)
        if by is None:
            raise BadParam("by", f"by must be one of {', '.join(GROUP_BY)}")
        since = _time(params, "since") if "since" in params else parse_since("24h")
        rows = await usage(source, by, since, _time(params, "until"))
        return {"by": by, "since": since, "rows": [row.as_dict() for row in rows]}


def _params(scope: Scope, allowed: set[str]) -> dict[str, str]:
    query = scope.get("query_string", b"").decode("latin-1")
    params: dict[str, str] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name not in allowed:
            raise BadParam(name, f"unknown parameter {name!r} (known: {', '.join(sorted(allowed))})")
        if name in params:
            raise BadParam(name, f"parameter {name!r} given more than once")
        if not value:
            raise BadParam(name, f"parameter {name!r} is empty")
        params[name] = value
    return params


def _time(params: dict[str, str], name: str) -> float | None:
    if name not in params:
        return None
    value = params[name]
    if not value.isascii() or len(value) > 64:
        raise BadParam(name, f"{name} must be 24h, 90m, 7d, an ISO 8601 time or epoch seconds (ASCII)")
    try:
        moment = parse_since(value)
    except ValueError as exc:
        raise BadParam(name, str(exc)) from exc
    except OverflowError:  # e.g. 99999999999d: further back than any date
        moment = math.inf
    if not -MAX_EPOCH <= moment <= MAX_EPOCH:  # also NaN and +-inf
        raise BadParam(name, f"{name} is out of range (a time between the years 1 and 9999)")
    return moment
