"""Confirmations: CANCEL and RESEND by mail waiting for the sender's address to confirm.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "confirmation",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("digest", sa.String(64), nullable=False, unique=True),
        sa.Column("reply_key_digest", sa.String(64), nullable=False, unique=True),
        sa.Column("request_id", sa.String(16), sa.ForeignKey("change_request.id"), nullable=False),
        sa.Column("action", sa.String(8), nullable=False),
        sa.Column("email", sa.String(320), nullable=False),
        sa.Column("inbound_id", sa.Integer(), sa.ForeignKey("inbound_message.id"), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_confirmation_request_email", "confirmation", ["request_id", "email"])


def downgrade() -> None:
    op.drop_index("ix_confirmation_request_email", table_name="confirmation")
    op.drop_table("confirmation")
