"""Tables created on first use, safely when several processes (workers, replicas) start at once.

`CREATE TABLE IF NOT EXISTS` is not atomic across connections: in PostgreSQL two sessions that both see the
table missing both try to create it, and the loser fails with a unique violation on `pg_type` (or
`DuplicateTable`, or on an index name); SQLite answers `database is locked` or `table already exists`. The
loser's work is already done by the winner, so `ensure_tables` retries the checked creation a few times and
raises only when creation still fails afterwards (a real failure: no permission, bad URL).
"""

from __future__ import annotations

import asyncio

import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError, OperationalError, ProgrammingError
from sqlalchemy.ext.asyncio import AsyncEngine

ATTEMPTS = 5
BACKOFF = 0.05  # seconds before the first retry, doubled after each


async def ensure_tables(engine: AsyncEngine, metadata: sa.MetaData) -> None:
    """Create every table and index of `metadata` that does not exist yet; tolerate concurrent creators."""
    delay = BACKOFF
    for attempt in range(ATTEMPTS):
        try:
            async with engine.begin() as conn:
                await conn.run_sync(metadata.create_all, checkfirst=True)
            return
        except (DBAPIError, OperationalError, ProgrammingError):
            if attempt == ATTEMPTS - 1:
                raise  # still failing once any concurrent creator must have committed: a real error
            await asyncio.sleep(delay)  # the winner's transaction commits shortly; checkfirst then sees it
            delay *= 2
