"""Observability: Prometheus metrics (audit trail and traces follow in issue #5)."""
