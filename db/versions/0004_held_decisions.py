"""Held link-page decisions: the decision, when it takes effect, the undo token's digest.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("validation") as batch:
        batch.add_column(sa.Column("held_decision", sa.String(length=8), nullable=True))
        batch.add_column(sa.Column("held_until", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("undo_digest", sa.String(length=64), nullable=True))
        batch.create_unique_constraint("uq_validation_undo_digest", ["undo_digest"])
    op.create_index("ix_validation_held_until", "validation", ["held_until"])


def downgrade() -> None:
    op.drop_index("ix_validation_held_until", table_name="validation")
    with op.batch_alter_table("validation") as batch:
        batch.drop_constraint("uq_validation_undo_digest", type_="unique")
        batch.drop_column("undo_digest")
        batch.drop_column("held_until")
        batch.drop_column("held_decision")
