"""Query functions: every read the service makes, each on an indexed path.

Rows become domain values here and nowhere else.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func
from sqlmodel import Session, col, select

from mailbot.domain import (
    Channel,
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
    Contact,
    EventRow,
    InboundMessage,
    OutboxRow,
    RoleChangeRow,
    ServiceRow,
    ValidationRow,
    ValidationToken,
)


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


def service(session: Session, row: ServiceRow) -> Service:
    contacts = contacts_by_id(session, {row.admin_id, row.tech_id, row.billing_id})
    holders = {
        Role.ADMIN: party(contacts[row.admin_id]),
        Role.TECH: party(contacts[row.tech_id]),
        Role.BILLING: party(contacts[row.billing_id]),
    }
    return Service(row.name, holders, row.in_good_standing, row.kind)


def pending_roles(session: Session, service_id: int) -> frozenset[Role]:
    query = (
        select(RoleChangeRow.role)
        .join(ChangeRequest, col(ChangeRequest.id) == RoleChangeRow.request_id)
        .where(ChangeRequest.service_id == service_id, ChangeRequest.status == "pending")
    )
    return frozenset(Role(role) for role in session.exec(query).all())


def request_row(
    session: Session, request_id: str, *, for_update: bool = False
) -> ChangeRequest | None:
    query = select(ChangeRequest).where(ChangeRequest.id == request_id.upper())
    if for_update:
        query = query.with_for_update()
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
    ids |= {v.contact_id for v in validations}
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
        service=service(session, service_record),
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


def requests(session: Session, status: str | None = None, limit: int = 500) -> list[ChangeRequest]:
    query = select(ChangeRequest).order_by(
        col(ChangeRequest.created_at).desc(), col(ChangeRequest.id)
    )
    if status:
        query = query.where(ChangeRequest.status == status)
    return list(session.exec(query.limit(limit)).all())


def events(session: Session, request_id: str) -> list[EventRow]:
    query = select(EventRow).where(EventRow.request_id == request_id).order_by(col(EventRow.id))
    return list(session.exec(query).all())


def recent_events(session: Session, kind: str, actor: str, since: datetime) -> int:
    query = (
        select(func.count())
        .select_from(EventRow)
        .where(EventRow.kind == kind, EventRow.actor_email == actor, col(EventRow.at) >= since)
    )
    return int(session.exec(query).one())


def inbound_by_key(session: Session, dedup_key: str) -> InboundMessage | None:
    return session.exec(select(InboundMessage).where(InboundMessage.dedup_key == dedup_key)).first()


def claim_inbound(session: Session, inbound_id: int) -> InboundMessage | None:
    """Lock a received message for processing, unless another worker has it or had it."""
    query = (
        select(InboundMessage)
        .where(InboundMessage.id == inbound_id, InboundMessage.status == "received")
        .with_for_update(skip_locked=True)
    )
    return session.exec(query).first()


def unprocessed_inbound(session: Session, limit: int = 100) -> list[int]:
    query = (
        select(InboundMessage.id)
        .where(InboundMessage.status == "received")
        .order_by(col(InboundMessage.id))
        .limit(limit)
    )
    return [i for i in session.exec(query).all() if i is not None]


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
