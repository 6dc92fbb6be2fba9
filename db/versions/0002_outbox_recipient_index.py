"""Index outbox rows by recipient and time, for the per-address answer rate limit.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_outbox_to_email_created_at", "outbox", ["to_email", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_outbox_to_email_created_at", table_name="outbox")
