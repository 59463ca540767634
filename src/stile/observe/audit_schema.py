"""The audit table in the state store (SQLite or Postgres), shared by the store sink and the queries.

One row per sealed event. `event` holds its JSON without `hash`, i.e. exactly the canonical body the hash
covers (rows written before that also carry `hash` in it; `audit_store.row_event` reads both), and `hash`
the hash; the other columns are copies for indexed search and usage reports, and `stile audit verify`
checks that they still agree with `event`. Rows are keyed by (chain, seq): replicas may share one chain (the sink
re-reads the head and re-seals on a conflict) or use one each (`audit.chain`).
"""

from __future__ import annotations

import sqlalchemy as sa

TABLE = "stile_audit_events"
metadata = sa.MetaData()

audit_events = sa.Table(
    TABLE,
    metadata,
    sa.Column("chain", sa.String(64), primary_key=True),
    sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("id", sa.String(64), nullable=False, unique=True),  # event id: replays never insert twice
    sa.Column("ts", sa.Float, nullable=False),  # event time, seconds since the epoch (UTC)
    sa.Column("agent", sa.String(256)),
    sa.Column("principal_user", sa.String(256)),
    sa.Column("virtual_server", sa.String(128)),
    sa.Column("method", sa.String(128)),
    sa.Column("tool", sa.String(256)),
    sa.Column("upstream", sa.String(128)),
    sa.Column("outcome", sa.String(32), nullable=False),
    sa.Column("latency_ms", sa.Float),
    sa.Column("upstream_ms", sa.Float),
    sa.Column("cost", sa.Float),
    sa.Column("event", sa.Text, nullable=False),  # the hashed body of the sealed event (JSON, no `hash`)
    sa.Column("hash", sa.String(64), nullable=False),
    sa.Index("ix_stile_audit_ts", "ts"),
    sa.Index("ix_stile_audit_agent_ts", "agent", "ts"),
    sa.Index("ix_stile_audit_user_ts", "principal_user", "ts"),
    sa.Index("ix_stile_audit_tool_ts", "tool", "ts"),
)

# Retention (`observe/audit_retention.py`): one signed checkpoint per pruned chain, the pruned chain's head.
# Verify starts each chain from its checkpoint; `signature` is an HMAC (`observe/audit_checkpoint.py`).
CHECKPOINTS = "stile_audit_checkpoints"
audit_checkpoints = sa.Table(
    CHECKPOINTS,
    metadata,
    sa.Column("chain", sa.String(64), primary_key=True),
    sa.Column("seq", sa.BigInteger, nullable=False),  # the last pruned event's seq
    sa.Column("hash", sa.String(64), nullable=False),  # and its hash: the next event's prev
    sa.Column("ts", sa.Float, nullable=False),  # the last pruned event's time
    sa.Column("pruned", sa.BigInteger, nullable=False),  # events of this chain pruned so far
    sa.Column("at", sa.Float, nullable=False),  # when the checkpoint was made
    sa.Column("export", sa.Text),  # the export file of the last batch, if exported
    sa.Column("kid", sa.String(64), nullable=False),
    sa.Column("signature", sa.String(128), nullable=False),
)

# Usage of pruned events, per chain, hour and (agent, user, tool, upstream): `stile usage` adds it to the
# events still stored. `latency` is a histogram (JSON {bucket: count}, `audit_rollup.bucket`).
ROLLUP = "stile_audit_rollup"
audit_rollup = sa.Table(
    ROLLUP,
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),  # sha256 of (chain, hour, agent, user, tool, upstream)
    sa.Column("chain", sa.String(64), nullable=False),
    sa.Column("hour", sa.Float, nullable=False),  # start of the hour, epoch seconds
    sa.Column("agent", sa.String(256)),
    sa.Column("principal_user", sa.String(256)),
    sa.Column("tool", sa.String(256)),
    sa.Column("upstream", sa.String(128)),
    sa.Column("calls", sa.BigInteger, nullable=False),
    sa.Column("errors", sa.BigInteger, nullable=False),
    sa.Column("cost", sa.Float, nullable=False),
    sa.Column("latency", sa.Text, nullable=False),
    sa.Index("ix_stile_audit_rollup_hour", "hour"),
)
