"""Who may read GET /metrics and the error details of GET /readyz (`metrics:` in the config).

Both paths first pass the Host/Origin (DNS-rebinding) checks like every other path, with one exception: a
/metrics request carrying the metrics token is served whatever its Host (Prometheus in Kubernetes scrapes
pod IPs and cannot set `Host` to one of `allowed_hosts`; a page tricked by DNS rebinding does not know the
token). Then /metrics is served to:
- a client on loopback: the TCP peer, or the forwarded client when the peer is in `trusted_proxies`
  (so Prometheus scraping on the same host needs no config, and a local reverse proxy listed in
  `trusted_proxies` does not turn every remote client into a local one). Unless `allowed_hosts` is
  set (then the Host check has already run), its `Host` must be a loopback name too: a browser on
  the gateway's host tricked by DNS rebinding sends the attacker's host name;
- a request with `Authorization: Bearer <metrics.token>` (or matching `metrics.token_hash`), compared
  in constant time;
- a principal holding one of `admin.roles` (API key or bearer token with the admin audience
  `<base URL>/admin`), when the admin API is enabled;
- anyone, with `metrics.public: true`.
Otherwise 401 (no or a wrong credential, with a Bearer challenge) or 403 (authenticated, no admin
role); each refusal is an audit event (`virtual_server: "(metrics)"`) and counted in
`stile_auth_failures_total{virtual_server="(metrics)"}`.

/readyz answers its status and each upstream's `ready` and `era` to everyone; the upstreams' error
text (it may name internal hosts, URLs, even credentials) only to the callers /metrics is served to
without `public` (loopback, token, admin). /healthz says `{"status": "ok"}` and nothing else.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable

from stile.assembly import Runtime
from stile.frontends.asgi import Send, send_json
from stile.identity.authn import Authenticator, AuthRequired
from stile.stores.keys import verify_against_hash
from stile.wire.forwarded import is_loopback

METRICS = "(metrics)"


class MetricsAccess:
    def __init__(self, runtime: Runtime, authn: Authenticator, base_url: Callable[[dict[str, str]], str]) -> None:
        self.gateway_cfg = runtime.cfg
        self.metrics = runtime.observers.metrics
        self.audit = runtime.observers.audit
        self.cfg = runtime.cfg.metrics
        self.authn = authn
        self.base_url = base_url
        self._token = self.cfg.token.encode() if self.cfg.token is not None else None

    def token_ok(self, headers: dict[str, str]) -> bool:
        scheme, _, value = headers.get("authorization", "").partition(" ")
        value = value.strip()
        if scheme.lower() != "bearer" or not value:
            return False
        if self._token is not None:
            return hmac.compare_digest(value.encode(), self._token)
        return self.cfg.token_hash is not None and verify_against_hash(value, self.cfg.token_hash)

    def _local(self, headers: dict[str, str]) -> bool:
        if not is_loopback(self.audit.client_address(headers)):
            return False
        return bool(self.gateway_cfg.allowed_hosts) or _loopback_host(headers.get("host", ""))

    def _local_or_token(self, headers: dict[str, str]) -> bool:
        return self._local(headers) or self.token_ok(headers)

    async def _admin(self, headers: dict[str, str]) -> tuple[bool, str | None]:
        """(is an admin, why not) for a request carrying credentials; raises AuthRequired on bad ones."""
        admin = self.gateway_cfg.admin
        if not admin.enabled:
            raise AuthRequired("authentication required")
        principal = await self.authn.authenticate(headers, f"{self.base_url(headers)}/admin")
        if set(principal.roles) & set(admin.roles):
            return True, None
        return False, f"no admin role (needs one of {admin.roles})"

    async def may_see_details(self, headers: dict[str, str]) -> bool:
        """For /readyz: loopback, the metrics token or an admin principal. Never answers the request."""
        if self._local_or_token(headers):
            return True
        if not (headers.get("authorization") or headers.get("x-api-key")):
            return False
        try:
            return (await self._admin(headers))[0]
        except AuthRequired:
            return False

    async def allow_metrics(self, headers: dict[str, str], send: Send) -> bool:
        """True when the caller may read /metrics; otherwise the 401/403 has been sent (and audited)."""
        if self.cfg.public or self._local_or_token(headers):
            return True
        try:
            ok, why = await self._admin(headers)
        except AuthRequired as exc:
            self._refused(headers, "unauthenticated", exc.message)
            challenge = 'Bearer realm="stile-metrics"' + (', error="invalid_token"' if headers.get("authorization")
                                                          else "")
            await send_json(send, 401, {"error": "unauthorized", "message": "metrics need the metrics token, an "
                                        "admin credential or a loopback client"},
                            [(b"www-authenticate", challenge.encode())])
            return False
        if ok:
            return True
        self._refused(headers, "denied", why or "denied")
        roles = self.gateway_cfg.admin.roles
        await send_json(send, 403, {"error": "forbidden", "message": f"needs one of the roles {roles}"})
        return False

    def _refused(self, headers: dict[str, str], outcome: str, reason: str) -> None:
        self.metrics.auth_failure(METRICS, "no_admin_role" if outcome == "denied" else outcome)
        if self.audit.enabled:
            self.audit.record_http(METRICS, headers, outcome, reason, method="GET /metrics")


def _loopback_host(host: str) -> bool:
    """`localhost`, `127.0.0.1:8080`, `[::1]:8080`... (a Host header naming this machine's loopback)."""
    host = host.lower()
    if host.startswith("["):
        name = host[1:host.find("]")] if "]" in host else host
    else:
        name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    return name == "localhost" or is_loopback(name)
