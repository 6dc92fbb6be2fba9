"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "contact",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("handle", sa.String(length=64), nullable=True),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("language", sa.String(length=8), nullable=False),
        sa.Column("in_good_standing", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("email"),
        sa.UniqueConstraint("handle"),
    )
    op.create_table(
        "inbound_message",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("dedup_key", sa.String(length=1000), nullable=False),
        sa.Column("message_id", sa.String(length=998), nullable=True),
        sa.Column("source", sa.String(length=8), nullable=False),
        sa.Column("envelope_from", sa.String(length=320), nullable=True),
        sa.Column("recipients", sa.Text(), nullable=False),
        sa.Column("raw", sa.LargeBinary(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("processed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("outcome", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("dedup_key"),
    )
    op.create_index(
        "ix_inbound_message_status_id", "inbound_message", ["status", "id"], unique=False
    )

    op.create_table(
        "service",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=253), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("admin_id", sa.Integer(), nullable=False),
        sa.Column("tech_id", sa.Integer(), nullable=False),
        sa.Column("billing_id", sa.Integer(), nullable=False),
        sa.Column("in_good_standing", sa.Boolean(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["admin_id"],
            ["contact.id"],
        ),
        sa.ForeignKeyConstraint(
            ["billing_id"],
            ["contact.id"],
        ),
        sa.ForeignKeyConstraint(
            ["tech_id"],
            ["contact.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    op.create_index(op.f("ix_service_admin_id"), "service", ["admin_id"], unique=False)
    op.create_index(op.f("ix_service_billing_id"), "service", ["billing_id"], unique=False)
    op.create_index(op.f("ix_service_tech_id"), "service", ["tech_id"], unique=False)

    op.create_table(
        "change_request",
        sa.Column("id", sa.String(length=16), nullable=False),
        sa.Column("service_id", sa.Integer(), nullable=False),
        sa.Column("requester_email", sa.String(length=320), nullable=False),
        sa.Column("requester_id", sa.Integer(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["requester_id"],
            ["contact.id"],
        ),
        sa.ForeignKeyConstraint(
            ["service_id"],
            ["service.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        op.f("ix_change_request_requester_email"),
        "change_request",
        ["requester_email"],
        unique=False,
    )
    op.create_index(
        "ix_change_request_service_status", "change_request", ["service_id", "status"], unique=False
    )
    op.create_index(
        "ix_change_request_status_expires_at",
        "change_request",
        ["status", "expires_at"],
        unique=False,
    )

    op.create_table(
        "event",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("request_id", sa.String(length=16), nullable=True),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("actor_email", sa.String(length=320), nullable=True),
        sa.Column("contact_id", sa.Integer(), nullable=True),
        sa.Column("channel", sa.String(length=8), nullable=True),
        sa.Column("inbound_id", sa.Integer(), nullable=True),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["contact_id"],
            ["contact.id"],
        ),
        sa.ForeignKeyConstraint(
            ["inbound_id"],
            ["inbound_message.id"],
        ),
        sa.ForeignKeyConstraint(
            ["request_id"],
            ["change_request.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_event_actor_email"), "event", ["actor_email"], unique=False)
    op.create_index(op.f("ix_event_request_id"), "event", ["request_id"], unique=False)

    op.create_table(
        "role_change",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("request_id", sa.String(length=16), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("from_contact_id", sa.Integer(), nullable=False),
        sa.Column("to_contact_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["from_contact_id"],
            ["contact.id"],
        ),
        sa.ForeignKeyConstraint(
            ["request_id"],
            ["change_request.id"],
        ),
        sa.ForeignKeyConstraint(
            ["to_contact_id"],
            ["contact.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("request_id", "role"),
    )
    op.create_table(
        "validation",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("request_id", sa.String(length=16), nullable=False),
        sa.Column("contact_id", sa.Integer(), nullable=False),
        sa.Column("side", sa.String(length=8), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("channel", sa.String(length=8), nullable=True),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("actor_email", sa.String(length=320), nullable=True),
        sa.Column("delivery", sa.String(length=8), nullable=False),
        sa.Column("reminders_sent", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["contact_id"],
            ["contact.id"],
        ),
        sa.ForeignKeyConstraint(
            ["request_id"],
            ["change_request.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("request_id", "contact_id"),
    )
    op.create_index(op.f("ix_validation_contact_id"), "validation", ["contact_id"], unique=False)
    op.create_index(op.f("ix_validation_request_id"), "validation", ["request_id"], unique=False)

    op.create_table(
        "outbox",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("message_id", sa.String(length=998), nullable=False),
        sa.Column("event", sa.String(length=32), nullable=False),
        sa.Column("request_id", sa.String(length=16), nullable=True),
        sa.Column("validation_id", sa.Integer(), nullable=True),
        sa.Column("to_email", sa.String(length=320), nullable=False),
        sa.Column("envelope_from", sa.String(length=320), nullable=False),
        sa.Column("subject", sa.String(length=998), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=True),
        sa.Column("carries_secret", sa.Boolean(), nullable=False),
        sa.Column("status", sa.String(length=8), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["request_id"],
            ["change_request.id"],
        ),
        sa.ForeignKeyConstraint(
            ["validation_id"],
            ["validation.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("message_id"),
    )
    op.create_index(op.f("ix_outbox_request_id"), "outbox", ["request_id"], unique=False)
    op.create_index(
        "ix_outbox_status_next_attempt_at", "outbox", ["status", "next_attempt_at"], unique=False
    )
    op.create_index(op.f("ix_outbox_validation_id"), "outbox", ["validation_id"], unique=False)

    op.create_table(
        "validation_token",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("validation_id", sa.Integer(), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("reply_key_digest", sa.String(length=64), nullable=False),
        sa.Column("issued_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["validation_id"],
            ["validation.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("digest"),
        sa.UniqueConstraint("reply_key_digest"),
    )
    op.create_index(
        op.f("ix_validation_token_validation_id"),
        "validation_token",
        ["validation_id"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_validation_token_validation_id"), table_name="validation_token")

    op.drop_table("validation_token")
    op.drop_index(op.f("ix_outbox_validation_id"), table_name="outbox")
    op.drop_index("ix_outbox_status_next_attempt_at", table_name="outbox")
    op.drop_index(op.f("ix_outbox_request_id"), table_name="outbox")

    op.drop_table("outbox")
    op.drop_index(op.f("ix_validation_request_id"), table_name="validation")
    op.drop_index(op.f("ix_validation_contact_id"), table_name="validation")

    op.drop_table("validation")
    op.drop_table("role_change")
    op.drop_index(op.f("ix_event_request_id"), table_name="event")
    op.drop_index(op.f("ix_event_actor_email"), table_name="event")

    op.drop_table("event")
    op.drop_index("ix_change_request_status_expires_at", table_name="change_request")
    op.drop_index("ix_change_request_service_status", table_name="change_request")
    op.drop_index(op.f("ix_change_request_requester_email"), table_name="change_request")

    op.drop_table("change_request")
    op.drop_index(op.f("ix_service_tech_id"), table_name="service")
    op.drop_index(op.f("ix_service_billing_id"), table_name="service")
    op.drop_index(op.f("ix_service_admin_id"), table_name="service")

    op.drop_table("service")
    op.drop_index("ix_inbound_message_status_id", table_name="inbound_message")

    op.drop_table("inbound_message")
    op.drop_table("contact")
