"""What watches the gateway: metrics, the audit trail and tracing, built once by the composition root."""

from __future__ import annotations

from dataclasses import dataclass

from stile.observe.audit import AuditLog
from stile.observe.metrics import Metrics
from stile.observe.tracing import Tracing


@dataclass(frozen=True)
class Observers:
    metrics: Metrics
    audit: AuditLog
    tracing: Tracing
