"""Query functions: every read the service makes, each on an indexed path.

Rows become domain values here and nowhere else.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, or_
from sqlmodel import Session, col, select

from mailbot.domain import (
    Channel,
    Decision,
    Delivery,
    Party,
    Request,
    RequestStatus,
    Role,
    RoleChange,
    Service,
    Side,
    Validation,
    ValidationStatus,
)
from mailbot.models import (
    ChangeRequest,
    Confirmation,
    Contact,
    EventRow,
    InboundMessage,
    OutboxRow,
    RoleChangeRow,
    ServiceRow,
    ValidationRow,
    ValidationToken,
)

SWEEP_BATCH = 500
"""At most this many due requests per sweep pass; the next pass takes the rest."""


def party(contact: Contact) -> Party:
    return Party(
        email=contact.email,
        name=contact.name,
        language=contact.language,
        in_good_standing=contact.in_good_standing,
        id=contact.id,
        handle=contact.handle,
    )


def contact_by_email(session: Session, email: str) -> Contact | None:
    return session.exec(select(Contact).where(Contact.email == email.lower())).first()


def contact_by_handle(session: Session, handle: str) -> Contact | None:
    return session.exec(select(Contact).where(Contact.handle == handle.upper())).first()


def contacts_by_id(session: Session, ids: set[int]) -> dict[int, Contact]:
    rows = session.exec(select(Contact).where(col(Contact.id).in_(ids))).all()
    return {row.id: row for row in rows if row.id is not None}


def service_row(session: Session, name: str, *, for_update: bool = False) -> ServiceRow | None:
    query = select(ServiceRow).where(ServiceRow.name == name.lower())
    if for_update:
        query = query.with_for_update()
    return session.exec(query).first()


def service(
    session: Session, row: ServiceRow, contacts: dict[int, Contact] | None = None
) -> Service:
    """The domain view of a service; ``contacts`` saves the query when already loaded."""
    if contacts is None:
        contacts = contacts_by_id(session, _holder_ids(row))
    holders = {
        Role.ADMIN: party(contacts[row.admin_id]),
        Role.TECH: party(contacts[row.tech_id]),
        Role.BILLING: party(contacts[row.billing_id]),
    }
    return Service(row.name, holders, row.in_good_standing, row.kind)


def _holder_ids(row: ServiceRow) -> set[int]:
    return {row.admin_id, row.tech_id, row.billing_id}


def pending_roles(session: Session, service_id: int) -> frozenset[Role]:
    query = (
        select(RoleChangeRow.role)
        .join(ChangeRequest, col(ChangeRequest.id) == RoleChangeRow.request_id)
        .where(ChangeRequest.service_id == service_id, ChangeRequest.status == "pending")
    )
    return frozenset(Role(role) for role in session.exec(query).all())


def request_row(
    session: Session, request_id: str, *, for_update: bool = False, skip_locked: bool = False
) -> ChangeRequest | None:
    query = select(ChangeRequest).where(ChangeRequest.id == request_id.upper())
    if for_update:
        query = query.with_for_update(skip_locked=skip_locked)
    return session.exec(query).first()


def request(session: Session, row: ChangeRequest) -> Request:
    """The domain view of a stored request, with its service as it stands now."""
    service_record = session.get(ServiceRow, row.service_id)
    assert service_record is not None
    changes = session.exec(
        select(RoleChangeRow)
        .where(RoleChangeRow.request_id == row.id)
        .order_by(col(RoleChangeRow.id))
    ).all()
    validations = validation_rows(session, row.id)
    ids = {c.from_contact_id for c in changes} | {c.to_contact_id for c in changes}
    ids |= {v.contact_id for v in validations} | _holder_ids(service_record)
    if row.requester_id is not None:
        ids.add(row.requester_id)
    contacts = contacts_by_id(session, ids)
    requester = (
        party(contacts[row.requester_id])
        if row.requester_id is not None
        else Party(email=row.requester_email)
    )
    return Request(
        id=row.id,
        service=service(session, service_record, contacts),
        requester=requester,
        changes=tuple(
            RoleChange(
                Role(c.role), party(contacts[c.from_contact_id]), party(contacts[c.to_contact_id])
            )
            for c in changes
        ),
        validations=tuple(_validation(v, contacts[v.contact_id]) for v in validations),
        created_at=row.created_at,
        expires_at=row.expires_at,
        status=RequestStatus(row.status),
        closed_at=row.closed_at,
    )


def _validation(row: ValidationRow, contact: Contact) -> Validation:
    return Validation(
        contact=party(contact),
        side=Side(row.side),
        status=ValidationStatus(row.status),
        channel=Channel(row.channel) if row.channel else None,
        decided_at=row.decided_at,
        actor=row.actor_email,
        reminders_sent=row.reminders_sent,
        delivery=Delivery(row.delivery),
        held=Decision(row.held_decision) if row.held_decision else None,
        held_until=row.held_until,
    )


def validation_rows(session: Session, request_id: str) -> list[ValidationRow]:
    query = (
        select(ValidationRow)
        .where(ValidationRow.request_id == request_id)
        .order_by(col(ValidationRow.id))
    )
    return list(session.exec(query).all())


def token_by_digest(session: Session, digest: str) -> ValidationToken | None:
    return session.exec(select(ValidationToken).where(ValidationToken.digest == digest)).first()


def token_by_reply_key(session: Session, key_digest: str) -> ValidationToken | None:
    query = select(ValidationToken).where(ValidationToken.reply_key_digest == key_digest)
    return session.exec(query).first()


def live_tokens(session: Session, validation_id: int) -> list[ValidationToken]:
    query = select(ValidationToken).where(
        ValidationToken.validation_id == validation_id, col(ValidationToken.used_at).is_(None)
    )
    return list(session.exec(query).all())


def sent_mail(session: Session, message_ids: tuple[str, ...]) -> OutboxRow | None:
    """The newest of our own mails among the ids a reply refers to."""
    if not message_ids:
        return None
    query = (
        select(OutboxRow)
        .where(col(OutboxRow.message_id).in_(message_ids))
        .order_by(col(OutboxRow.id).desc())
    )
    return session.exec(query).first()


def requests(
    session: Session,
    status: str | None = None,
    service: str | None = None,
    contact: str | None = None,
    limit: int = 500,
) -> list[ChangeRequest]:
    """Requests newest first, filtered by status, service name and party's address."""
    query = select(ChangeRequest).order_by(
        col(ChangeRequest.created_at).desc(), col(ChangeRequest.id)
    )
    if status:
        query = query.where(ChangeRequest.status == status)
    if service:
        row = service_row(session, service)
        query = query.where(ChangeRequest.service_id == (row.id if row else -1))
    if contact:
        found = contact_by_email(session, contact)
        asked = select(ValidationRow.request_id).where(
            ValidationRow.contact_id == (found.id if found else -1)
        )
        query = query.where(
            or_(
                col(ChangeRequest.requester_email) == contact.lower(),
                col(ChangeRequest.id).in_(asked),
            )
        )
    return list(session.exec(query.limit(limit)).all())


def events(session: Session, request_id: str) -> list[EventRow]:
    query = select(EventRow).where(EventRow.request_id == request_id).order_by(col(EventRow.id))
    return list(session.exec(query).all())


def due_expiries(session: Session, now: datetime) -> list[str]:
    """Pending requests past their expiry (index: status, expires_at)."""
    query = (
        select(ChangeRequest.id)
        .where(ChangeRequest.status == "pending", col(ChangeRequest.expires_at) <= now)
        .order_by(col(ChangeRequest.expires_at))
        .limit(SWEEP_BATCH)
    )
    return list(session.exec(query).all())


def due_reminders(session: Session, now: datetime) -> list[str]:
    """Requests with an awaited contact whose reminder is due (index: next_reminder_at)."""
    query = (
        select(ValidationRow.request_id)
        .where(col(ValidationRow.next_reminder_at) <= now)
        .distinct()
        .limit(SWEEP_BATCH)
    )
    return list(session.exec(query).all())


def due_held(session: Session, now: datetime) -> list[str]:
    """Requests with a held link-page decision whose undo window has passed."""
    query = (
        select(ValidationRow.request_id)
        .where(col(ValidationRow.held_until) <= now)
        .distinct()
        .limit(SWEEP_BATCH)
    )
    return list(session.exec(query).all())


def validation_by_undo(session: Session, digest: str) -> ValidationRow | None:
    """The validation whose held decision an undo link's token can withdraw."""
    return session.exec(select(ValidationRow).where(ValidationRow.undo_digest == digest)).first()


def requests_of(
    session: Session, email: str, contact_id: int | None, limit: int
) -> list[ChangeRequest]:
    """The requests someone opened or must validate: pending first, newest first."""
    asked = select(ValidationRow.request_id).where(ValidationRow.contact_id == contact_id)
    query = (
        select(ChangeRequest)
        .where(or_(col(ChangeRequest.requester_email) == email, col(ChangeRequest.id).in_(asked)))
        .order_by(
            col(ChangeRequest.status) != "pending",
            col(ChangeRequest.created_at).desc(),
            col(ChangeRequest.id),
        )
        .limit(limit)
    )
    return list(session.exec(query).all())


def recent_request_events(session: Session, request_id: str, kind: str, since: datetime) -> int:
    query = (
        select(func.count())
        .select_from(EventRow)
        .where(EventRow.request_id == request_id, EventRow.kind == kind, col(EventRow.at) >= since)
    )
    return int(session.exec(query).one())


def recent_events(session: Session, kind: str, actor: str, since: datetime) -> int:
    query = (
        select(func.count())
        .select_from(EventRow)
        .where(EventRow.kind == kind, EventRow.actor_email == actor, col(EventRow.at) >= since)
    )
    return int(session.exec(query).one())


def inbound_by_keys(session: Session, keys: list[str]) -> dict[str, InboundMessage]:
    query = select(InboundMessage).where(col(InboundMessage.dedup_key).in_(keys))
    return {row.dedup_key: row for row in session.exec(query).all()}


def claim_inbound(session: Session, inbound_id: int) -> InboundMessage | None:
    """Lock a received message for processing, unless another worker has it or had it."""
    query = (
        select(InboundMessage)
        .where(InboundMessage.id == inbound_id, InboundMessage.status == "received")
        .with_for_update(skip_locked=True)
    )
    return session.exec(query).first()


def unprocessed_inbound(session: Session, limit: int = 100, after: int = 0) -> list[int]:
    """Ids of stored messages not yet acted on, from ``after`` up (index: status, id)."""
    query = (
        select(InboundMessage.id)
        .where(InboundMessage.status == "received", col(InboundMessage.id) > after)
        .order_by(col(InboundMessage.id))
        .limit(limit)
    )
    return [i for i in session.exec(query).all() if i is not None]


def inbound_counts(session: Session) -> dict[str, int]:
    """How many stored messages are in each status."""
    query = select(InboundMessage.status, func.count()).group_by(col(InboundMessage.status))
    return {status: int(count) for status, count in session.exec(query).all()}


def inbound_overview(session: Session, status: str | None, limit: int) -> list[InboundMessage]:
    """Stored messages, oldest first, optionally of one status."""
    query = select(InboundMessage).order_by(col(InboundMessage.id)).limit(max(limit, 0))
    if status:
        query = query.where(InboundMessage.status == status)
    return list(session.exec(query).all())


def outbox_overview(session: Session, sent_limit: int) -> list[OutboxRow]:
    """Everything not yet sent (queued, being sent, dead), then the latest sent."""
    unsent = select(OutboxRow).where(OutboxRow.status != "sent").order_by(col(OutboxRow.id))
    sent = (
        select(OutboxRow)
        .where(OutboxRow.status == "sent")
        .order_by(col(OutboxRow.id).desc())
        .limit(max(sent_limit, 0))
    )
    return [*session.exec(unsent).all(), *session.exec(sent).all()]


def recent_answers(session: Session, to: str, events: tuple[str, ...], since: datetime) -> int:
    query = (
        select(func.count())
        .select_from(OutboxRow)
        .where(
            OutboxRow.to_email == to,
            col(OutboxRow.created_at) >= since,
            col(OutboxRow.event).in_(events),
        )
    )
    return int(session.exec(query).one())


def due_outbox(session: Session, now: datetime, limit: int) -> list[OutboxRow]:
    query = (
        select(OutboxRow)
        .where(
            col(OutboxRow.status).in_(("queued", "sending")), col(OutboxRow.next_attempt_at) <= now
        )
        .order_by(col(OutboxRow.next_attempt_at), col(OutboxRow.id))
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return list(session.exec(query).all())


def confirmation_by_digest(session: Session, digest: str) -> Confirmation | None:
    query = select(Confirmation).where(Confirmation.digest == digest)
    return session.exec(query.with_for_update()).first()


def confirmation_by_reply_key(session: Session, key_digest: str) -> Confirmation | None:
    query = select(Confirmation).where(Confirmation.reply_key_digest == key_digest)
    return session.exec(query.with_for_update()).first()


def live_confirmation(
    session: Session, request_id: str, action: str, email: str, now: datetime
) -> Confirmation | None:
    """A confirmation of the same action still awaited from the same address."""
    query = select(Confirmation).where(
        Confirmation.request_id == request_id,
        Confirmation.email == email,
        Confirmation.action == action,
        col(Confirmation.used_at).is_(None),
        Confirmation.expires_at > now,
    )
    return session.exec(query).first()


def outbox_rows(session: Session, ids: list[int]) -> list[OutboxRow]:
    query = select(OutboxRow).where(col(OutboxRow.id).in_(ids)).order_by(col(OutboxRow.id))
    return list(session.exec(query).all())


def dead_outbox(session: Session) -> list[OutboxRow]:
    query = select(OutboxRow).where(OutboxRow.status == "dead").order_by(col(OutboxRow.id))
    return list(session.exec(query).all())


def waiting_outbox(session: Session, now: datetime) -> list[OutboxRow]:
    """Queued mail waiting out a backoff (index: status, next_attempt_at)."""
    query = select(OutboxRow).where(
        OutboxRow.status == "queued", col(OutboxRow.next_attempt_at) > now
    )
    return list(session.exec(query).all())


def holds_a_role(session: Session, contact_id: int) -> bool:
    query = select(ServiceRow.id).where(
        or_(
            col(ServiceRow.admin_id) == contact_id,
            col(ServiceRow.tech_id) == contact_id,
            col(ServiceRow.billing_id) == contact_id,
        )
    )
    return session.exec(query.limit(1)).first() is not None


def has_decided(session: Session, contact_id: int) -> bool:
    """Whether the contact ever decided a validation (which takes a token we sent)."""
    query = select(ValidationRow.id).where(
        ValidationRow.contact_id == contact_id, ValidationRow.status != "pending"
    )
    return session.exec(query.limit(1)).first() is not None


def mails_to_mailbox_since(
    session: Session, address: str, since: datetime, events: tuple[str, ...] = ()
) -> int:
    """Mails queued since then to the mailbox of ``address``: the address itself
    and its ``+tag`` variants, which land in the same mailbox; only ``events``
    when given."""
    local, _, domain = address.partition("@")
    base = local.partition("+")[0]
    pattern = f"{_like_escaped(base)}+%@{_like_escaped(domain)}"
    query = (
        select(func.count())
        .select_from(OutboxRow)
        .where(
            or_(
                col(OutboxRow.to_email) == f"{base}@{domain}",
                col(OutboxRow.to_email).like(pattern, escape="\\"),
            ),
            col(OutboxRow.created_at) >= since,
        )
    )
    if events:
        query = query.where(col(OutboxRow.event).in_(events))
    return int(session.exec(query).one())


def _like_escaped(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
