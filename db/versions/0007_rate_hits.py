"""Rate limits in the database: one row per counted attempt, shared by every instance.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "rate_hit",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("key", sa.String(320), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_rate_hit_kind_key_at", "rate_hit", ["kind", "key", "at"])
    op.create_index("ix_rate_hit_at", "rate_hit", ["at"])


def downgrade() -> None:
    op.drop_index("ix_rate_hit_at", table_name="rate_hit")
    op.drop_index("ix_rate_hit_kind_key_at", table_name="rate_hit")
    op.drop_table("rate_hit")
