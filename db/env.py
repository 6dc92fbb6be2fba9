"""Alembic environment: migrations run on the engine mailbot hands over."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context
from sqlmodel import SQLModel

import mailbot.storage.tables  # noqa: F401  (registers the tables on SQLModel.metadata)

engine = context.config.attributes["engine"]

with engine.begin() as connection:
    if connection.dialect.name == "postgresql":
        # Each instance runs `mailbot init` as it starts: two at once on one
        # database would both find no schema and both create it, and one would
        # fail. The second waits here, then finds the schema up to date.
        # (SQLite: the engine takes the file's write lock at BEGIN already.)
        lock = sa.text("SELECT pg_advisory_xact_lock(hashtextextended(:name, 0))")
        connection.execute(lock, {"name": "mailbot schema migration"})
    context.configure(
        connection=connection,
        target_metadata=SQLModel.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    context.run_migrations()
