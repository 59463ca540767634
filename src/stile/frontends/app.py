"""The ASGI application: routing, DNS-rebinding defences, limits, health, lifespan.

Routes: `/mcp/<vs>` (Streamable HTTP, both eras), `/sse/<vs>` + `/sse/<vs>/messages` (legacy
HTTP+SSE), `/healthz` (liveness), `/readyz` (every upstream reachable), `/metrics` (who may read it, and
the details of /readyz: `metrics_access.py`).
"""

from __future__ import annotations

import contextlib
import gc
import logging
from typing import Any

from stile.assembly import Runtime
from stile.bus import BusUnavailable
from stile.core.context import ANONYMOUS, Principal
from stile.frontends import oauth_routes
from stile.frontends.admin import AdminApi
from stile.frontends.asgi import (
    BodyTooLarge,
    Receive,
    Scope,
    Send,
    header_map,
    read_body,
    send_bytes,
    send_json,
    send_text,
)
from stile.frontends.hostcheck import parse_origin, quoted, valid_host
from stile.frontends.legacy_sse import LegacySseEndpoint
from stile.frontends.metrics_access import MetricsAccess
from stile.frontends.protocol import HEAD_CHECKED
from stile.frontends.request_checks import UnsupportedMediaType, is_json, repeated_credential
from stile.frontends.streamable import StreamableEndpoint, error_body
from stile.identity.audience import LOOPBACK, host_sets_audience
from stile.identity.authn import Authenticator, AuthRequired, missing_scopes
from stile.observe.metrics import CONTENT_TYPE
from stile.policies.screen import Screen
from stile.wire import jsonrpc
from stile.wire.errors import INTERNAL_ERROR, ClientError, StileError
from stile.wire.forwarded import PEER

log = logging.getLogger("stile.app")
WELL_KNOWN = "/.well-known/oauth-protected-resource"
JWKS_PATH = "/.well-known/jwks.json"


class StileApp:
    def __init__(self, runtime: Runtime, *, bind_host: str = "127.0.0.1", start_gateway: bool = True,
                 state_url: str | None = None) -> None:
        self.runtime = runtime
        self.gw = gw = runtime.gateway
        self.metrics = runtime.observers.metrics
        self.audit = runtime.observers.audit
        self.mcp = StreamableEndpoint(gw)
        self.sse = LegacySseEndpoint(gw, self.mcp)
        state_url = state_url or runtime.state_url
        self.authn = Authenticator(gw.cfg, state_url or gw.cfg.state or "sqlite:///stile.db")
        gw.rpc.on_cast("keys.revoked", lambda payload, sender: self.authn.forget_verified())  # 0009
        screen = next((p for p in runtime.policies if isinstance(p, Screen)), None)
        self.admin = AdminApi(gw.cfg, self.audit, runtime.state_url, self.authn, self.audience_base,
                              screen=screen, on_release=self._released)
        self.screen = screen
        gw.rpc.on_cast("screen.approved", self._approved_elsewhere)  # an admin approved it on another replica
        self.metrics_access = MetricsAccess(runtime, self.authn, self.base_url)
        self._start_gateway = start_gateway
        limits = gw.cfg.limits
        self.max_body = limits.max_body_bytes
        self.max_header = limits.max_header_bytes
        self.max_depth = limits.max_json_depth
        local = bind_host in LOOPBACK
        self.host_sets_audience = host_sets_audience(gw.cfg, bind_host)  # else bearer tokens are refused
        # A 404 names the endpoints (to fix a typo) only when all of them are anonymous anyway: behind
        # authentication, the names of virtual servers are not told to whoever asks.
        public = all(vs.auth == "none" for vs in gw.cfg.virtual_servers.values())
        self.endpoint_hint = ("; virtual servers: " + ", ".join(f"/mcp/{n}" for n in list(gw.views)[:50])
                              if public else "")
        self.allowed_hosts = {h.lower() for h in gw.cfg.allowed_hosts} or (set(LOOPBACK) if local else set())
        self.allowed_origins = {o.lower().rstrip("/") for o in gw.cfg.allowed_origins}

    async def _released(self, item_digest: str) -> int:
        """An admin approved a quarantined definition here: clients' lists changed; other replicas release it too."""
        self._lists_changed()
        if not self.gw.bus.shared:
            return 0
        try:
            reached = await self.gw.rpc.cast(None, "screen.approved", {"digest": item_digest})
        except BusUnavailable:
            log.warning("screen: approval of %s not shared: the bus is unavailable", item_digest)
            return 0
        return max(0, reached - 1)  # the broadcast reaches this process too

    def _approved_elsewhere(self, payload: dict[str, Any], sender: str) -> None:
        item_digest = payload.get("digest")
        if sender == self.gw.rpc.replica or self.screen is None or not isinstance(item_digest, str):
            return
        if any(e.digest == item_digest for e in self.screen.quarantine_entries()) and self.screen.approve(item_digest):
            log.warning("screen: %s approved on replica %s", item_digest, sender[:64])
            self._lists_changed()

    def _lists_changed(self) -> None:
        """A quarantined definition was released: every client may see more than its lists said."""
        for name in self.gw.cfg.virtual_servers:
            self.gw.hub.publish_lists_changed(name)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        try:
            await self._http(scope, receive, send)
        except Exception:  # outermost boundary: log, answer 500 without internals
            log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            with contextlib.suppress(RuntimeError):  # the response had already started
                await send_json(send, 500, jsonrpc.error(None, INTERNAL_ERROR, "internal error"))

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                if self._start_gateway:
                    await self.runtime.start()
                # Everything allocated so far lives for the process: keep it out of the collector's scans,
                # and collect young objects less often (fewer pauses in the p99 tail under load).
                gc.freeze()
                gc.set_threshold(20_000, 20, 20)
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                if self._start_gateway:
                    await self.runtime.stop()
                await self.authn.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    def _host_ok(self, headers: dict[str, str]) -> bool:
        if not self.allowed_hosts:
            return True
        host = headers.get("host", "").lower()
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        return host in self.allowed_hosts or name in self.allowed_hosts

    def _origin_ok(self, headers: dict[str, str]) -> bool:
        origin = headers.get("origin")
        if origin is None:
            return True
        origin = origin.lower().rstrip("/")
        if origin in self.allowed_origins:
            return True
        parts = parse_origin(origin)
        if parts is None:  # not even a URL: refused like any foreign origin
            return False
        if parts.hostname in ("127.0.0.1", "localhost", "::1"):
            return True
        host = headers.get("host", "").lower()
        return bool(host) and parts.netloc == host and not self.allowed_origins

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        method: str = scope["method"]
        if path == "/healthz":
            await send_json(send, 200, {"status": "ok"})
            return
        headers = header_map(scope)
        client = scope.get("client")
        if client:
            headers[PEER] = client[0]  # resolved lazily with trusted_proxies (wire/forwarded.py)
        host = headers.get("host")
        if host is not None and not valid_host(host):  # before any URL is built from it
            self._refused_transport(path, headers, "BadHost", "malformed Host header")
            await send_text(send, 400, "Invalid Host header")
            return
        if path.startswith(WELL_KNOWN):
            await self._resource_metadata(path, headers, send)
            return
        if path == JWKS_PATH:  # the keys identity assertions to upstreams are signed with (docs/credentials.md)
            await send_json(send, 200, self.runtime.jwks())
            return
        # the guarded protocol caps the whole head (more than this sum) already; other servers (tests) are checked here
        if (scope.get(HEAD_CHECKED, self.max_header + 1) > self.max_header
                and sum(len(k) + len(v) for k, v in headers.items()) > self.max_header):
            await send_text(send, 431, "Request header fields too large")
            return
        if not self._host_ok(headers):
            if path == "/metrics" and self._origin_ok(headers) and self.metrics_access.token_ok(headers):
                await send_bytes(send, 200, self.metrics.render(), content_type=CONTENT_TYPE.encode())
                return  # a scraper of pod IPs: the token proves it is no browser tricked by DNS rebinding
            self._refused_transport(path, headers, "InvalidHost",
                                    f"Host {quoted(headers.get('host', ''))[:200]!r} not allowed")
            await send_text(send, 421, "Invalid Host header")
            return
        if not self._origin_ok(headers):
            self._refused_transport(path, headers, "InvalidOrigin",
                                    f"Origin {quoted(headers.get('origin', ''))[:200]!r} not allowed")
            await send_text(send, 403, "Invalid Origin header")
            return
        repeated = repeated_credential(scope["headers"])
        if repeated is not None:
            await send_json(send, 400, jsonrpc.error(None, -32600, f"more than one {repeated} header: send one"))
            return
        if path.startswith(oauth_routes.PREFIX):  # the user_oauth consent flow (browsers)
            secure = (self.gw.cfg.public_url or "").startswith("https://")
            await oauth_routes.serve(self.runtime.consent_flow(), scope, path, headers, send, secure)
            return
        if path == "/readyz":
            await self._ready(headers, send)
            return
        if path == "/metrics":
            if await self.metrics_access.allow_metrics(headers, send):
                await send_bytes(send, 200, self.metrics.render(), content_type=CONTENT_TYPE.encode())
            return
        if path.startswith("/admin/"):
            await self.admin.handle(scope, headers, send)
            return
        kind, _, rest = path.lstrip("/").partition("/")
        vs, _, tail = rest.partition("/")
        if kind not in ("mcp", "sse") or not vs or vs not in self.gw.views or (kind == "mcp" and tail):
            await send_json(send, 404, jsonrpc.error(None, -32601, f"no MCP endpoint at {path[:200]}"
                                                     + self.endpoint_hint))
            return
        principal = ANONYMOUS
        if self.gw.cfg.virtual_servers[vs].auth != "none":
            try:
                base = self.audience_base(headers)
                principal = await self.authn.authenticate(headers, base and f"{base}/mcp/{vs}")
            except AuthRequired as exc:
                self._refused(vs, headers, "unauthenticated", exc.message)
                await self._challenge(send, headers, vs, exc)
                return
            missing = missing_scopes(principal, self.gw.cfg.virtual_servers[vs].scopes)
            if missing:
                self._refused(vs, headers, "denied", f"insufficient scope (missing {' '.join(sorted(missing))})")
                await self._insufficient_scope(send, headers, vs)
                return
        if method == "POST" and (kind == "mcp" or tail == "messages") and not is_json(headers.get("content-type")):
            refused = UnsupportedMediaType()
            self._rejected(vs, headers, refused, None, principal)
            await send_json(send, 415, error_body(None, refused))
            return
        try:
            if kind == "sse":
                await self.sse.handle(scope, vs, tail, headers, receive, send, principal)
            elif method == "POST":
                await self._post(vs, headers, receive, send, principal)
            elif method == "GET":
                await self.mcp.get(vs, headers, receive, send, principal)
            elif method == "DELETE":
                await self.mcp.delete(vs, headers, send, principal)
            else:
                await send_json(send, 405, jsonrpc.error(None, -32600, "method not allowed"),
                                [(b"allow", b"GET, POST, DELETE")])
        except StileError as exc:
            self._rejected(vs, headers, exc, f"{method} (http)", principal)
            await send_json(send, exc.http_status if exc.http_status >= 400 else 400, error_body(None, exc),
                            exc.http_headers() or None)

    async def _post(self, vs: str, headers: dict[str, str], receive: Receive, send: Send,
                    principal: Principal) -> None:
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            self._rejected(vs, headers, ClientError(f"body larger than {self.max_body} bytes"), None, principal)
            await send_json(send, 413, jsonrpc.error(None, -32600, f"body larger than {self.max_body} bytes"))
            return
        try:
            body = await read_body(receive, self.max_body)
        except BodyTooLarge:
            self._rejected(vs, headers, ClientError(f"body larger than {self.max_body} bytes"), None, principal)
            await send_json(send, 413, jsonrpc.error(None, -32600, f"body larger than {self.max_body} bytes"))
            return
        except ConnectionAbortedError:
            return
        try:
            msg = jsonrpc.parse_body(body, max_depth=self.max_depth)
        except ClientError as exc:
            self._rejected(vs, headers, exc, None, principal)
            await send_json(send, 400, error_body(None, exc))
            return
        rid = msg.get("id") if isinstance(msg, dict) and jsonrpc.is_valid_id(msg.get("id")) else None
        try:
            await self.mcp.post(vs, msg, headers, receive, send, principal)
        except StileError as exc:
            method = msg.get("method") if isinstance(msg, dict) else "(batch)"
            self._rejected(vs, headers, exc, method if isinstance(method, str) else None, principal)
            await send_json(send, exc.http_status if exc.http_status >= 400 else 200, error_body(rid, exc),
                            exc.http_headers() or None)

    def _rejected(self, vs: str, headers: dict[str, str], exc: StileError, method: str | None,
                  principal: Principal) -> None:
        """A request the transport refused before the pipeline (bad JSON, unknown session, wrong headers...)."""
        if exc.recorded:  # refused inside the chain (403 on initialize or a stream): already on the trail
            return
        reason = type(exc).__name__
        self.metrics.rejected(vs, reason)
        if self.audit.enabled:
            self.audit.record_http(vs, headers, "error", exc.message, method=method and method[:128],
                                      principal=principal if principal.method != "none" else None,
                                      error_type=reason, code=exc.jsonrpc_code)

    def _refused_transport(self, path: str, headers: dict[str, str], reason: str, detail: str) -> None:
        """A Host or Origin refused (DNS rebinding, a foreign page): counted and audited, named by the virtual
        server only when the path names a real one (client-chosen text never becomes a metric label)."""
        _, _, rest = path.lstrip("/").partition("/")
        vs = rest.partition("/")[0]
        vs = vs if vs in self.gw.views else "(none)"
        self.metrics.rejected(vs, reason)
        if self.audit.enabled:
            self.audit.record_http(vs, headers, "denied", detail, error_type=reason)

    def _refused(self, vs: str, headers: dict[str, str], outcome: str, reason: str) -> None:
        self.metrics.auth_failure(vs, "insufficient_scope" if outcome == "denied" else outcome)
        if self.audit.enabled:
            self.audit.record_http(vs, headers, outcome, reason)

    # --- OAuth 2.1 resource server (RFC 9728) -------------------------------------------------
    def base_url(self, headers: dict[str, str]) -> str:
        if self.gw.cfg.public_url:
            return self.gw.cfg.public_url.rstrip("/")
        return f"http://{headers.get('host', '127.0.0.1')}"

    def audience_base(self, headers: dict[str, str]) -> str | None:
        """The base of token audiences; None off loopback without public_url (identity/audience.py)."""
        return self.base_url(headers) if self.host_sets_audience else None

    def resource_url(self, headers: dict[str, str], vs: str) -> str:
        """The virtual server's canonical URL: the audience its tokens must carry."""
        return f"{self.base_url(headers)}/mcp/{vs}"

    def _metadata_url(self, headers: dict[str, str], vs: str) -> str:
        return f"{self.base_url(headers)}{WELL_KNOWN}/mcp/{vs}"

    async def _challenge(self, send: Send, headers: dict[str, str], vs: str, exc: AuthRequired) -> None:
        value = f'Bearer resource_metadata="{quoted(self._metadata_url(headers, vs))}"'
        scopes = self.gw.cfg.auth.scopes_supported
        if scopes:
            value += f', scope="{quoted(" ".join(scopes))}"'
        if headers.get("authorization"):
            value += ', error="invalid_token"'
        await send_json(send, 401, jsonrpc.error(None, -32600, exc.message),
                        [(b"www-authenticate", value.encode())])

    async def _insufficient_scope(self, send: Send, headers: dict[str, str], vs: str) -> None:
        """403 step-up (MCP authorization): the challenge names every scope this virtual server needs."""
        needed = " ".join(self.gw.cfg.virtual_servers[vs].scopes)
        value = (f'Bearer error="insufficient_scope", scope="{quoted(needed)}", '
                 f'resource_metadata="{quoted(self._metadata_url(headers, vs))}"')
        await send_json(send, 403, jsonrpc.error(None, -32600, "insufficient scope"),
                        [(b"www-authenticate", value.encode())])

    async def _resource_metadata(self, path: str, headers: dict[str, str], send: Send) -> None:
        rest = path[len(WELL_KNOWN):]
        auth = self.gw.cfg.auth
        servers = auth.authorization_servers or [j.issuer for j in auth.jwt]
        if rest in ("", "/"):
            resource = self.base_url(headers)
        elif rest.startswith("/mcp/") and rest[5:] in self.gw.views:
            resource = self.resource_url(headers, rest[5:])
        else:
            await send_json(send, 404, {"error": "not_found"})
            return
        body: dict[str, Any] = {"resource": resource, "authorization_servers": servers,
                                "bearer_methods_supported": ["header"], "resource_name": "Stile MCP gateway"}
        if auth.scopes_supported:
            body["scopes_supported"] = auth.scopes_supported
        await send_json(send, 200, body)

    async def _ready(self, headers: dict[str, str], send: Send) -> None:
        details = await self.metrics_access.may_see_details(headers)  # error text may name internal hosts
        ok, status = self.gw.health.report(details)  # from the active health checks (core/health.py)
        # the bus: down means degraded (cross-replica answers refused) but still serving, so 200 (docs/design/0009)
        bus = self.gw.cluster.status()
        word = "ready" if ok and bus["up"] else "degraded"
        await send_json(send, 200 if ok else 503, {"status": word, "upstreams": status, "bus": bus})
