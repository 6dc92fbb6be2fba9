"""Outbox addresses in byte order on PostgreSQL, as SQLite keeps them.

The per-mailbox counts ask for an address and its ``+tag`` variants as the
range ``"base+" <= address < "base,"``, which holds in byte order only. Under
the database's own collation that range had to be asked in ``COLLATE "C"``,
which the address index (in the database's collation) cannot serve: each
count read the whole index, the sweep's counts growing with the outbox.
With the column in ``"C"`` the index serves the range and the equality alike.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.alter_column(
            "outbox",
            "to_email",
            type_=sa.String(320, collation="C"),
            existing_type=sa.String(320),
            existing_nullable=False,
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.alter_column(
            "outbox",
            "to_email",
            type_=sa.String(320),
            existing_type=sa.String(320, collation="C"),
            existing_nullable=False,
        )
