"""Observability config: `audit`, `tracing`, `admin`, `metrics`, `costs` (public keys; keep them working)."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

ArgumentsMode = Literal["none", "digest", "redacted", "full"]
Durability = Literal["process", "fsync"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


_AGE = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")
_AGE_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)", re.I)
_SIZE_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
               "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}


def parse_age(text: str) -> float:
    """`30d`, `12h`, `90m`, `2w`, `45s` as seconds; ValueError naming the forms otherwise."""
    match = _AGE.fullmatch(text.strip())
    if match is None or float(match.group(1)) <= 0:
        raise ValueError(f"bad age {text!r}: use a positive number with s, m, h, d or w (e.g. 30d)")
    return float(match.group(1)) * _AGE_SECONDS[match.group(2)]


def parse_size(text: str) -> int:
    """`5GB`, `500MB`, `2GiB`, `1000000B` as bytes; ValueError naming the forms otherwise."""
    match = _SIZE.fullmatch(text.strip())
    if match is None or float(match.group(1)) <= 0:
        raise ValueError(f"bad size {text!r}: use a positive number with B, KB, MB, GB, TB (or KiB, MiB, GiB, TiB)")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])


class RetentionConfig(_Strict):
    """`audit.retention`: prune the store's oldest events (background, batched), keeping every chain verifiable.

    Events older than `max_age`, and the oldest beyond `max_events` or beyond `max_size` (the audit table's
    size as the database reports it), are removed in batches of `batch` every `interval` seconds; each chain's
    pruned head becomes a signed checkpoint that `stile audit verify` starts from. With `export` the pruned
    events are first written to `<export>/<chain>/<first seq>-<last seq>.jsonl.gz` (fsync'd before the delete).
    Usage totals of pruned events are kept per hour in a rollup table (`stile usage` reads both).
    """

    max_age: str | None = None
    max_size: str | None = None
    max_events: int | None = Field(default=None, ge=1)
    interval: float = Field(default=3600.0, ge=1.0, le=7 * 86400.0)  # seconds between background prunes
    batch: int = Field(default=5000, ge=10, le=100_000)  # events per transaction
    export: str | None = None  # directory for the gzip JSONL export of pruned events (beside the config)

    @field_validator("max_age")
    @classmethod
    def _age(cls, value: str | None) -> str | None:
        if value is not None:
            parse_age(value)
        return value

    @field_validator("max_size")
    @classmethod
    def _size(cls, value: str | None) -> str | None:
        if value is not None:
            parse_size(value)
        return value

    @model_validator(mode="after")
    def _some_limit(self) -> RetentionConfig:
        if self.max_age is None and self.max_size is None and self.max_events is None:
            raise ValueError("audit.retention needs at least one of max_age, max_size, max_events")
        return self

    @property
    def age_seconds(self) -> float | None:
        return parse_age(self.max_age) if self.max_age is not None else None

    @property
    def size_bytes(self) -> int | None:
        return parse_size(self.max_size) if self.max_size is not None else None


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
    # Store chain name. Default: one chain per writer (STILE_REPLICA_ID, else the host name); set it to share one.
    chain: str | None = Field(default=None, min_length=1, max_length=64)
    spool_dir: str | None = None  # default: `audit-spool` beside the state database / config
    queue_size: int = Field(default=10_000, ge=100)
    retry_seconds: float = Field(default=1.0, gt=0, le=300)  # first retry of a failed sink; doubles up to 30 s
    durability: Durability = "process"  # a reply leaves once its event survives a crash (process) / power loss
    retention: RetentionConfig | None = None  # prune old store events (signed checkpoints keep chains verifiable)


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
