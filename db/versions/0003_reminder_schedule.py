"""Reminder schedule: each validation's next reminder time, indexed for the sweep.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("validation") as batch:
        batch.add_column(sa.Column("next_reminder_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index("ix_validation_next_reminder_at", "validation", ["next_reminder_at"])


def downgrade() -> None:
    op.drop_index("ix_validation_next_reminder_at", table_name="validation")
    with op.batch_alter_table("validation") as batch:
        batch.drop_column("next_reminder_at")
