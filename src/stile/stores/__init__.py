"""Durable state behind narrow protocols (API keys first).

Each store is a small `Protocol` plus one SQLAlchemy 2 async implementation that runs on SQLite
(`sqlite:///path.db`, via aiosqlite) and PostgreSQL (`postgresql://...`, via asyncpg). Tables are created on
first use; there are no migrations yet (Alembic comes when a schema first changes).
"""
