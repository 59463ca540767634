"""Observability config: `audit`, `tracing`, `admin`, `metrics`, `costs` (public keys; keep them working)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

ArgumentsMode = Literal["none", "digest", "redacted", "full"]
Durability = Literal["process", "fsync"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AuditConfig(_Strict):
    """Audit trail: one hash-chained event per MCP request, written to every configured sink.

    `store` writes to the state store (`state`: SQLite beside the config by default, or Postgres);
    `jsonl` appends to a file; `stdout` prints one JSON line per event. A sink that fails spools its
    events to `spool_dir` and replays them when it recovers (also after a restart).

    Before a reply is sent its event is in a write-ahead log (`<spool_dir>/wal`), so a process crash
    loses no acknowledged event (`durability: process`); `fsync` also waits for a group-commit fsync,
    so power loss does not either.
    """

    store: bool = True
    jsonl: str | None = None
    stdout: bool = False
    arguments: ArgumentsMode = "redacted"  # default for virtual servers without their own `audit_arguments`
    chain: str = Field(default="default", min_length=1, max_length=64)  # store chain name (replicas may share)
    spool_dir: str | None = None  # default: `audit-spool` beside the state database / config
    queue_size: int = Field(default=10_000, ge=100)
    retry_seconds: float = Field(default=1.0, gt=0, le=300)  # first retry of a failed sink; doubles up to 30 s
    durability: Durability = "process"  # a reply leaves once its event survives a crash (process) / power loss


class TracingConfig(_Strict):
    """OpenTelemetry traces (W3C trace context is always propagated; spans only when enabled)."""

    enabled: bool = False
    otlp_endpoint: str | None = None  # e.g. http://collector:4318/v1/traces (OTLP/HTTP protobuf)
    otlp_headers: dict[str, str] = Field(default_factory=dict)
    service_name: str = "stile"
    sample_ratio: float = Field(default=1.0, ge=0.0, le=1.0)  # for root spans; a sampled parent is honoured


class AdminConfig(_Strict):
    """The JSON admin API under /admin (audit search, usage): principals holding one of `roles`."""

    enabled: bool = True
    roles: list[str] = Field(default_factory=lambda: ["admin"])

    @field_validator("roles")
    @classmethod
    def _roles(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("admin.roles needs at least one role (or set admin.enabled: false)")
        return value


class MetricsConfig(_Strict):
    """Who may read GET /metrics (and the error details of GET /readyz).

    Default: clients on loopback (the TCP peer, or the forwarded client behind a `trusted_proxies` hop),
    a request with `Authorization: Bearer <token>` (compared in constant time; `token` usually comes from
    the environment, `token: "${METRICS_TOKEN}"`, or `token_hash` from `stile keys hash`), or a principal
    holding one of `admin.roles`. `public: true` serves /metrics to anyone who passes the Host/Origin checks.
    """

    token: str | None = Field(default=None, min_length=16)
    token_hash: str | None = Field(default=None, pattern=r"^hmac-sha256\$[^$]+\$[^$]+$")
    public: bool = False

    @model_validator(mode="after")
    def _one_token(self) -> MetricsConfig:
        if self.token is not None and self.token_hash is not None:
            raise ValueError("set at most one of metrics.token and metrics.token_hash")
        return self
