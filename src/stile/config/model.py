"""The YAML configuration contract (public keys; keep them working)."""

from __future__ import annotations

import ipaddress
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from stile.config.governance import GovernanceConfig
from stile.config.identity import AuthConfig, RoleConfig, RuleConfig
from stile.config.observe import AdminConfig, ArgumentsMode, AuditConfig, MetricsConfig, TracingConfig
from stile.config.upstream_identity import TokenExchangeConfig, UserOAuthConfig

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BreakerConfig(_Strict):
    """Per-endpoint circuit breaker of a pooled upstream (`endpoints` / `replicas`)."""

    failures: int = Field(default=5, ge=1, description="consecutive failures that open the breaker")
    failure_rate: float = Field(default=0.5, gt=0, le=1, description="failed share of `window` calls that opens it")
    window: int = Field(default=20, ge=2)
    open_seconds: float = Field(default=10.0, gt=0)
    trial_calls: int = Field(default=1, ge=1, description="half-open trial calls that must succeed to close")


class EjectionConfig(_Strict):
    """Passive outlier ejection of a pooled upstream's endpoints."""

    consecutive_failures: int = Field(default=3, ge=1)
    base_seconds: float = Field(default=5.0, gt=0, description="first ejection; doubles each time in a row")
    max_seconds: float = Field(default=60.0, gt=0)
    max_ejected_percent: float = Field(default=50.0, ge=0, le=100)


class HealthCheckConfig(_Strict):
    """Active checks of a pooled upstream's endpoints: a `ping` every `interval` seconds (0: off)."""

    interval: float = Field(default=0.0, ge=0)
    timeout: float = Field(default=2.0, gt=0)
    healthy: int = Field(default=2, ge=1, description="passed checks in a row that bring an endpoint back")
    unhealthy: int = Field(default=3, ge=1, description="failed checks in a row that take it out")


class UpstreamConfig(_Strict):
    """An MCP server Stile fronts: `url` (Streamable HTTP or legacy SSE) or `command` (stdio).

    Several endpoints of one upstream: `endpoints` (URLs, instead of `url`) or `replicas` (stdio processes);
    see docs/design/0007-endpoints.md."""

    url: str | None = None
    endpoints: list[str] | None = None
    replicas: int = Field(default=1, ge=1, le=64)
    balance: Literal["round_robin", "least_in_flight", "session"] = "round_robin"
    retries: int = Field(default=2, ge=0, le=10, description="extra attempts of a safe call, on other endpoints")
    retry_budget: float = Field(default=0.2, ge=0, le=1, description="retries as a share of requests (10s window)")
    retry_min_per_second: float = Field(default=3.0, ge=0)
    retry_tools: list[str] = Field(default_factory=list)  # the upstream's own tool names (globs) safe to retry
    breaker: BreakerConfig = Field(default_factory=BreakerConfig)
    ejection: EjectionConfig = Field(default_factory=EjectionConfig)
    health_check: HealthCheckConfig = Field(default_factory=HealthCheckConfig)
    transport: Literal["streamable-http", "http", "sse", "stdio"] | None = None
    command: list[str] | None = None
    env: dict[str, str] = Field(default_factory=dict)
    cwd: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    era: Literal["auto", "legacy", "modern"] = "auto"
    timeout: float = Field(default=60.0, gt=0, description="seconds for one upstream request")
    connect_timeout: float = Field(default=10.0, gt=0)
    first_byte_timeout: float | None = Field(default=None, gt=0, description="seconds until an HTTP answer starts")
    max_connections: int = Field(default=100, ge=1)
    health_interval: float | None = Field(default=None, gt=0, description="seconds between health checks; "
                                          "default `health.interval`")
    # service: the configured headers; assertion: a JWT minted by Stile; token_exchange / user_oauth: a token
    # for the calling user (docs/credentials.md); passthrough: the caller's own token (`stile check` warns)
    identity: Literal["service", "assertion", "passthrough", "token_exchange", "user_oauth"] = "service"
    token_exchange: TokenExchangeConfig | None = None
    oauth: UserOAuthConfig | None = None
    stdio_per_worker: bool = Field(default=False, description="with `stile serve --workers N`: one process per "
                                   "worker instead of one per host shared by all workers")

    @model_validator(mode="after")
    def _one_kind(self) -> UpstreamConfig:
        if self.stdio_per_worker and self.command is None:
            raise ValueError("`stdio_per_worker` is for stdio (`command`) upstreams")
        if (self.identity == "token_exchange") != (self.token_exchange is not None):
            raise ValueError("identity: token_exchange and a `token_exchange:` block go together")
        if (self.identity == "user_oauth") != (self.oauth is not None):
            raise ValueError("identity: user_oauth and an `oauth:` block go together")
        if self.endpoints is not None:
            if self.url is not None or self.command is not None:
                raise ValueError("set `endpoints` instead of `url`, not beside it (stdio: `replicas`)")
            if not self.endpoints:
                raise ValueError("`endpoints` must list at least one URL")
            if len(set(self.endpoints)) != len(self.endpoints):
                raise ValueError("`endpoints` lists a URL twice")
            for url in self.endpoints:
                if not re.match(r"^https?://", url):
                    raise ValueError(f"endpoint {url!r} must start with http:// or https://")
            if self.transport == "stdio" or self.replicas > 1:
                raise ValueError("`replicas` is for stdio (`command`); HTTP upstreams list `endpoints`")
            return self
        if self.replicas > 1 and self.command is None:
            raise ValueError("`replicas` is for stdio (`command`) upstreams; HTTP upstreams list `endpoints`")
        if (self.url is None) == (self.command is None):
            raise ValueError("set exactly one of `url` (HTTP) or `command` (stdio)")
        if self.command is not None:
            if not self.command:
                raise ValueError("`command` must not be empty")
            if self.transport not in (None, "stdio"):
                raise ValueError("a `command` upstream uses transport stdio")
        if self.url is not None:
            if not re.match(r"^https?://", self.url):
                raise ValueError("`url` must start with http:// or https://")
            if self.transport == "stdio":
                raise ValueError("transport stdio needs `command`, not `url`")
        if self.identity != "service" and (self.url is None or self.transport == "sse"):
            raise ValueError(f"identity: {self.identity} needs a Streamable HTTP `url` upstream (the caller is "
                             "known per request there)")
        return self

    @property
    def kind(self) -> Literal["http", "sse", "stdio"]:
        if self.command is not None:
            return "stdio"
        return "sse" if self.transport == "sse" else "http"


class Override(_Strict):
    name: str | None = None
    description: str | None = None


PrefixMode = Literal["always", "conditional", "never"]


class VirtualServerConfig(_Strict):
    upstreams: list[str] | None = None
    auth: Literal["none"] | None = None
    prefix: PrefixMode = "always"
    allow_tools: list[str] | None = None
    deny_tools: list[str] = Field(default_factory=list)
    allow_resources: list[str] | None = None
    deny_resources: list[str] = Field(default_factory=list)
    allow_prompts: list[str] | None = None
    deny_prompts: list[str] = Field(default_factory=list)
    tools: dict[str, Override] = Field(default_factory=dict)
    prompts: dict[str, Override] = Field(default_factory=dict)
    instructions: str | None = None
    page_size: int = Field(default=1000, ge=1)
    scopes: list[str] = Field(default_factory=list)  # OAuth scopes a bearer token needs here (403 step-up)
    audit_arguments: ArgumentsMode | None = None  # how arguments are recorded here; default `audit.arguments`
    # methods the method table does not classify, forwarded to one upstream: method glob -> upstream
    # (roles must also grant them with `allow_methods`)
    passthrough_methods: dict[str, str] = Field(default_factory=dict)
    chain: list[str] | None = None  # the policy chain here, by policy name; default: the top-level `chain`


class LimitsConfig(_Strict):
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    max_header_bytes: int = Field(default=16 * 1024, ge=1024)
    header_timeout: float = Field(default=10.0, gt=0)
    body_timeout: float = Field(default=30.0, gt=0, description="seconds to receive a request body after its head")
    max_connections: int | None = Field(default=None, ge=1,
                                        description="client connections, beyond: 503; default min(10000, fds/2)")
    max_upstream_response_bytes: int = Field(default=16 * 1024 * 1024, ge=1024,
                                             description="an upstream response body, SSE event or stdio line")
    max_json_depth: int = Field(default=64, ge=4)
    max_listen_subscriptions: int = Field(default=256, ge=1)  # resourceSubscriptions in one subscriptions/listen
    session_lifetime: float = Field(default=86_400.0, gt=0)  # seconds a legacy session id opens after initialize
    max_metric_series: int = Field(default=10_000, ge=10)  # label sets per metric family; more go to (overflow)


class HealthConfig(_Strict):
    """Active upstream health checks (they drive /readyz and retry discovery in the background)."""

    interval: float = Field(default=10.0, gt=0, description="seconds between checks of a reachable upstream; "
                            "a down one is retried with backoff up to this")
    timeout: float = Field(default=5.0, gt=0, description="seconds one probe (ping) may take")
    startup_wait: float = Field(default=5.0, ge=0, description="seconds after start during which a client "
                                "request waits for the upstreams' first discovery attempts; then it answers "
                                "from what is known")


class VaultConfig(_Strict):
    """Where the vault's master key comes from when `STILE_MASTER_KEY` is not set (docs/credentials.md)."""

    master_key_file: str | None = None  # a file holding the base64 of 32 bytes
    master_key_command: list[str] | None = None  # a KMS hook: its stdout is the base64 key
    cache_seconds: float = Field(default=5.0, gt=0, le=3600)  # how often referenced secrets are re-read


class GatewayConfig(_Strict):
    upstreams: dict[str, UpstreamConfig] = Field(default_factory=dict)
    virtual_servers: dict[str, VirtualServerConfig] = Field(default_factory=dict)
    separator: str = "__"
    session_key: str | None = None
    allowed_origins: list[str] = Field(default_factory=list)
    allowed_hosts: list[str] = Field(default_factory=list)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    health: HealthConfig = Field(default_factory=HealthConfig)
    vault: VaultConfig = Field(default_factory=VaultConfig)
    # cross-replica state (docs/design/0009-cross-replica-state.md): redis://[:password@]host[:port][/db]
    redis: str | None = None
    redis_prefix: str = Field(default="stile:", pattern=r"^[A-Za-z0-9_.:-]{0,64}$")
    state: str | None = None  # state store URL; default sqlite:///stile.db beside the config
    public_url: str | None = None  # canonical base URL clients use (token audience); default http://HOST:PORT
    auth: AuthConfig = Field(default_factory=AuthConfig)
    roles: dict[str, RoleConfig] = Field(default_factory=dict)
    rules: list[RuleConfig] = Field(default_factory=list)
    audit: AuditConfig = Field(default_factory=AuditConfig)
    tracing: TracingConfig = Field(default_factory=TracingConfig)
    admin: AdminConfig = Field(default_factory=AdminConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    trusted_proxies: list[str] = Field(default_factory=list)  # CIDRs whose X-Forwarded-For/Forwarded is believed
    costs: dict[str, float] = Field(default_factory=dict)  # `upstream.tool` glob -> cost units per call (default 1)
    chain: list[str] | None = None  # policies, outermost first; default: every registered default policy by order
    policies: dict[str, dict[str, Any]] = Field(default_factory=dict)  # per-policy config, by policy name
    governance: GovernanceConfig = Field(default_factory=GovernanceConfig)  # tool pinning (docs/governance.md)

    @field_validator("upstreams", "virtual_servers")
    @classmethod
    def _names(cls, value: dict[str, object]) -> dict[str, object]:
        for name in value:
            if not _NAME.match(name):
                raise ValueError(f"name {name!r} must match {_NAME.pattern}")
        return value

    @field_validator("redis")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        if value is not None:
            from stile.stores.redis_lite import parse_url

            parse_url(value)  # ValueError: a clear config error
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _cidrs(cls, value: list[str]) -> list[str]:
        for cidr in value:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError as exc:
                raise ValueError(f"trusted_proxies: {cidr!r} is not an IP address or CIDR ({exc})") from None
        return value

    @field_validator("costs")
    @classmethod
    def _costs(cls, value: dict[str, float]) -> dict[str, float]:
        for ref, units in value.items():
            if "." not in ref:
                raise ValueError(f"costs key {ref!r} must name `upstream.tool` (globs allowed, e.g. `github.*`)")
            if units < 0:
                raise ValueError(f"costs[{ref!r}] must be >= 0, got {units}")
        return value

    @field_validator("separator")
    @classmethod
    def _sep(cls, value: str) -> str:
        if not re.match(r"^[A-Za-z0-9_-]{1,4}$", value):
            raise ValueError("separator must be 1-4 characters of [A-Za-z0-9_-]")
        return value
