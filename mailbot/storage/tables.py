"""The database tables (SQLModel). The schema itself is owned by the migrations in ``db/``.

Enumerations are stored as short strings so that both SQLite and PostgreSQL
read them the same way; timestamps are always timezone-aware UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from sqlmodel import Field, SQLModel

from mailbot.domain import (
    Delivery,
    InboundStatus,
    OutboxStatus,
    RequestStatus,
    ValidationStatus,
)


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """Stores UTC; hands back aware datetimes even where SQLite forgets the zone."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the database")
        return value.astimezone(UTC)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


BYTE_ORDERED_ADDRESS = sa.String(320).with_variant(sa.String(320, collation="C"), "postgresql")
"""An address compared byte by byte on PostgreSQL too (SQLite's own order): an
address and its ``+tag`` variants are then one range of its index."""


def _when(*, nullable: bool = False, index: bool = False) -> Any:
    return Field(default=None, sa_type=UTCDateTime, nullable=nullable, index=index)


class ContactRow(SQLModel, table=True):
    __tablename__ = "contact"

    id: int | None = Field(default=None, primary_key=True)
    handle: str | None = Field(default=None, max_length=64, unique=True)
    email: str = Field(max_length=320, unique=True)
    name: str = Field(default="", max_length=200)
    language: str = Field(default="en", max_length=8)
    in_good_standing: bool = True
    created_at: datetime = _when()
    updated_at: datetime = _when()


class ServiceRow(SQLModel, table=True):
    __tablename__ = "service"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=253, unique=True)
    kind: str = Field(default="domain", max_length=32)
    admin_id: int = Field(foreign_key="contact.id", index=True)
    tech_id: int = Field(foreign_key="contact.id", index=True)
    billing_id: int = Field(foreign_key="contact.id", index=True)
    in_good_standing: bool = True
    updated_at: datetime = _when()


class RequestRow(SQLModel, table=True):
    __tablename__ = "change_request"
    __table_args__ = (
        sa.Index("ix_change_request_status_expires_at", "status", "expires_at"),
        sa.Index("ix_change_request_service_status", "service_id", "status"),
    )

    id: str = Field(primary_key=True, max_length=16)
    service_id: int = Field(foreign_key="service.id")
    requester_email: str = Field(max_length=320, index=True)
    requester_id: int | None = Field(default=None, foreign_key="contact.id")
    status: str = Field(default=RequestStatus.PENDING, max_length=16)
    created_at: datetime = _when()
    expires_at: datetime = _when()
    closed_at: datetime | None = _when(nullable=True)


class RoleChangeRow(SQLModel, table=True):
    __tablename__ = "role_change"
    __table_args__ = (sa.UniqueConstraint("request_id", "role"),)

    id: int | None = Field(default=None, primary_key=True)
    request_id: str = Field(foreign_key="change_request.id", max_length=16)
    role: str = Field(max_length=16)
    from_contact_id: int = Field(foreign_key="contact.id")
    to_contact_id: int = Field(foreign_key="contact.id")


class ValidationRow(SQLModel, table=True):
    __tablename__ = "validation"
    __table_args__ = (sa.UniqueConstraint("request_id", "contact_id"),)

    id: int | None = Field(default=None, primary_key=True)
    request_id: str = Field(foreign_key="change_request.id", max_length=16, index=True)
    contact_id: int = Field(foreign_key="contact.id", index=True)
    side: str = Field(max_length=8)
    status: str = Field(default=ValidationStatus.PENDING, max_length=16)
    channel: str | None = Field(default=None, max_length=8)
    decided_at: datetime | None = _when(nullable=True)
    actor_email: str | None = Field(default=None, max_length=320)
    delivery: str = Field(default=Delivery.QUEUED, max_length=8)
    reminders_sent: int = 0
    next_reminder_at: datetime | None = _when(nullable=True, index=True)
    """When this contact's next reminder falls due; None when none is (the sweep's index)."""
    held_decision: str | None = Field(default=None, max_length=8)
    """A link-page decision not applied yet (accept | refuse); the contact may undo it."""
    held_until: datetime | None = _when(nullable=True, index=True)
    """When the held decision takes effect (the sweep's index)."""
    undo_digest: str | None = Field(default=None, max_length=64, unique=True)
    """Digest of the token in the latest undo link; it undoes only while a decision is held,
    and the next held decision replaces it, so each link works once."""
    created_at: datetime = _when()


class TokenRow(SQLModel, table=True):
    """A token's digest; several may exist per validation (resends, reminders)."""

    __tablename__ = "validation_token"

    id: int | None = Field(default=None, primary_key=True)
    validation_id: int = Field(foreign_key="validation.id", index=True)
    digest: str = Field(max_length=64, unique=True)
    reply_key_digest: str = Field(max_length=64, unique=True)
    """Digest of the key in the plus-address this token's mail asks replies to."""
    issued_at: datetime = _when()
    used_at: datetime | None = _when(nullable=True)
    """When the token stopped working before its validation was decided (a resend)."""


class EventRow(SQLModel, table=True):
    """The append-only log of everything that happened, and through what."""

    __tablename__ = "event"

    id: int | None = Field(default=None, primary_key=True)
    at: datetime = _when()
    request_id: str | None = Field(
        default=None, foreign_key="change_request.id", max_length=16, index=True
    )
    kind: str = Field(max_length=32)
    actor_email: str | None = Field(default=None, max_length=320, index=True)
    contact_id: int | None = Field(default=None, foreign_key="contact.id")
    channel: str | None = Field(default=None, max_length=8)
    inbound_id: int | None = Field(default=None, foreign_key="inbound_message.id")
    detail: str = Field(default="", sa_type=sa.Text)


class InboundRow(SQLModel, table=True):
    """A received message, kept raw; ``dedup_key`` makes redelivery harmless."""

    __tablename__ = "inbound_message"
    __table_args__ = (sa.Index("ix_inbound_message_status_id", "status", "id"),)

    id: int | None = Field(default=None, primary_key=True)
    dedup_key: str = Field(max_length=1000, unique=True)
    message_id: str | None = Field(default=None, max_length=998)
    source: str = Field(default="smtp", max_length=8)
    envelope_from: str | None = Field(default=None, max_length=320)
    recipients: str = Field(default="", sa_type=sa.Text)
    raw: bytes = Field(sa_type=sa.LargeBinary)
    received_at: datetime = _when()
    status: str = Field(default=InboundStatus.RECEIVED, max_length=16)
    processed_at: datetime | None = _when(nullable=True)
    outcome: str = Field(default="", sa_type=sa.Text)


class OutboxRow(SQLModel, table=True):
    """One email to send: queued as an intent, rendered when first claimed; the
    payload of a mail carrying a token is dropped once sent."""

    __tablename__ = "outbox"
    __table_args__ = (
        sa.Index("ix_outbox_status_next_attempt_at", "status", "next_attempt_at"),
        sa.Index("ix_outbox_to_email_created_at", "to_email", "created_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    message_id: str = Field(max_length=998, unique=True)
    event: str = Field(max_length=32)
    request_id: str | None = Field(
        default=None, foreign_key="change_request.id", max_length=16, index=True
    )
    validation_id: int | None = Field(default=None, foreign_key="validation.id", index=True)
    to_email: str = Field(max_length=320, sa_type=BYTE_ORDERED_ADDRESS)
    envelope_from: str = Field(max_length=320)
    subject: str = Field(default="", max_length=998)
    payload: bytes | None = Field(default=None, sa_type=sa.LargeBinary)
    """The mail's bytes, made when a sender first claims it (or when queued, for
    mail queued before intents); None again once a mail carrying a secret is sent."""
    intent: str | None = Field(default=None, sa_type=sa.Text)
    """What rendering the mail needs (``outgoing.intents``, JSON) while it waits
    to be rendered; None once rendered. It holds the same secrets as the payload."""
    carries_secret: bool = False
    status: str = Field(default=OutboxStatus.QUEUED, max_length=8)
    attempts: int = 0
    next_attempt_at: datetime = _when()
    last_error: str | None = Field(default=None, sa_type=sa.Text)
    created_at: datetime = _when()
    queued_at: datetime | None = _when(nullable=True)
    """When the mail's time in the queue began: its creation, or ``outbox retry``.
    Its queue lifetime counts from here (``created_at`` for older rows)."""
    sent_at: datetime | None = _when(nullable=True)


class ConfirmationRow(SQLModel, table=True):
    """A CANCEL or RESEND by mail that waits for its sender's address to confirm it.

    The token and the reply key of the confirmation mail are kept only as
    digests; either one, sent back before ``expires_at``, carries the action
    out once.
    """

    __tablename__ = "confirmation"
    __table_args__ = (sa.Index("ix_confirmation_request_email", "request_id", "email"),)

    id: int | None = Field(default=None, primary_key=True)
    digest: str = Field(max_length=64, unique=True)
    reply_key_digest: str = Field(max_length=64, unique=True)
    request_id: str = Field(foreign_key="change_request.id", max_length=16)
    action: str = Field(max_length=8)
    """``cancel`` or ``resend``."""
    email: str = Field(max_length=320)
    """The address asked to confirm: the sender of the command."""
    inbound_id: int | None = Field(default=None, foreign_key="inbound_message.id")
    created_at: datetime = _when()
    expires_at: datetime = _when()
    used_at: datetime | None = _when(nullable=True)


class RateHitRow(SQLModel, table=True):
    """One counted attempt against a rate limit: an answer mailed, tokens resent, a
    wrong token, a link-page guess. Kept in the database so that every instance on
    it counts the same attempts; rows older than their limit's window are deleted."""

    __tablename__ = "rate_hit"
    __table_args__ = (sa.Index("ix_rate_hit_kind_key_at", "kind", "key", "at"),)

    id: int | None = Field(default=None, primary_key=True)
    kind: str = Field(max_length=16)
    """Which limit (``storage.limits.Limit``)."""
    key: str = Field(max_length=320)
    """What is counted: an address, a request id, a client network."""
    at: datetime = _when(index=True)
