"""Query functions: every read the service makes, each on an indexed path.

Rows become domain values here and nowhere else.
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from sqlalchemy import or_
from sqlmodel import Session, col, select
from sqlmodel.sql.expression import SelectOfScalar

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
from mailbot.storage.tables import (
    ConfirmationRow,
    ContactRow,
    EventRow,
    OutboxRow,
    RequestRow,
    RoleChangeRow,
    ServiceRow,
    TokenRow,
    ValidationRow,
)

SWEEP_BATCH = 500
"""At most this many due requests per sweep pass; the next pass takes the rest."""

_VALIDATIONS_READ = "mailbot.validations_read"
"""Where ``request()`` leaves, in its session, the validation rows it read."""


class ContactFields(Protocol):
    """What a party is made of: a ``ContactRow``, or a row read without the ORM."""

    email: str
    name: str
    language: str
    in_good_standing: bool
    id: int | None
    handle: str | None


def party(contact: ContactFields) -> Party:
    return Party(
        email=contact.email,
        name=contact.name,
        language=contact.language,
        in_good_standing=contact.in_good_standing,
        id=contact.id,
        handle=contact.handle,
    )


def contact_by_email(session: Session, email: str) -> ContactRow | None:
    return session.exec(select(ContactRow).where(ContactRow.email == email.lower())).first()


def contact_by_handle(session: Session, handle: str) -> ContactRow | None:
    return session.exec(select(ContactRow).where(ContactRow.handle == handle.upper())).first()


def contacts_by_id(session: Session, ids: set[int]) -> dict[int, ContactRow]:
    rows = session.exec(select(ContactRow).where(col(ContactRow.id).in_(ids))).all()
    return {row.id: row for row in rows if row.id is not None}


def service_row(session: Session, name: str, *, for_update: bool = False) -> ServiceRow | None:
    query = select(ServiceRow).where(ServiceRow.name == name.lower())
    if for_update:
        query = query.with_for_update()
    return session.exec(query).first()


def service(
    session: Session, row: ServiceRow, contacts: dict[int, ContactRow] | None = None
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
        .join(RequestRow, col(RequestRow.id) == RoleChangeRow.request_id)
        .where(RequestRow.service_id == service_id, RequestRow.status == RequestStatus.PENDING)
    )
    return frozenset(Role(role) for role in session.exec(query).all())


def request_row(
    session: Session, request_id: str, *, for_update: bool = False, skip_locked: bool = False
) -> RequestRow | None:
    query = select(RequestRow).where(RequestRow.id == request_id.upper())
    if for_update:
        query = query.with_for_update(skip_locked=skip_locked)
    return session.exec(query).first()


def request(session: Session, row: RequestRow) -> Request:
    """The domain view of a stored request, with its service as it stands now."""
    service_record = session.get(ServiceRow, row.service_id)
    assert service_record is not None
    changes = session.exec(
        select(RoleChangeRow)
        .where(RoleChangeRow.request_id == row.id)
        .order_by(col(RoleChangeRow.id))
    ).all()
    validations = validation_rows(session, row.id)
    session.info[_VALIDATIONS_READ] = (session.get_transaction(), row.id, validations)
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


def _validation(row: ValidationRow, contact: ContactRow) -> Validation:
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
    """A request's validations as stored now. Rows the session already holds
    are read again (``populate_existing``): a writer reads them under the
    request's lock, and another answer may have changed them since the session
    first met them (when it looked up a token, say)."""
    query = (
        select(ValidationRow)
        .where(ValidationRow.request_id == request_id)
        .order_by(col(ValidationRow.id))
        .execution_options(populate_existing=True)
    )
    return list(session.exec(query).all())


def validations_read(session: Session, request_id: str) -> list[ValidationRow]:
    """The validations ``request()`` last read in this transaction, if it was of
    this request (with the changes made to them since), else read now: a
    transition is computed from that read and saved to the same rows, under
    the same lock, without a second query."""
    read = session.info.get(_VALIDATIONS_READ)
    if read is not None and read[0] is session.get_transaction() and read[1] == request_id:
        return list(read[2])
    return validation_rows(session, request_id)


def token_by_digest(session: Session, digest: str) -> tuple[TokenRow, ValidationRow] | None:
    """A token and the validation it stands for, in one query."""
    query = (
        select(TokenRow, ValidationRow)
        .join(ValidationRow, col(ValidationRow.id) == TokenRow.validation_id)
        .where(TokenRow.digest == digest)
    )
    found = session.exec(query).first()
    return None if found is None else (found[0], found[1])


def token_by_reply_key(session: Session, key_digest: str) -> TokenRow | None:
    query = select(TokenRow).where(TokenRow.reply_key_digest == key_digest)
    return session.exec(query).first()


def live_tokens(session: Session, validation_id: int) -> list[TokenRow]:
    query = select(TokenRow).where(
        TokenRow.validation_id == validation_id, col(TokenRow.used_at).is_(None)
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
) -> list[RequestRow]:
    """Requests newest first, filtered by status, service name and party's address."""
    query = select(RequestRow).order_by(col(RequestRow.created_at).desc(), col(RequestRow.id))
    if status:
        query = query.where(RequestRow.status == status)
    if service:
        row = service_row(session, service)
        query = query.where(RequestRow.service_id == (row.id if row else -1))
    if contact:
        found = contact_by_email(session, contact)
        asked = select(ValidationRow.request_id).where(
            ValidationRow.contact_id == (found.id if found else -1)
        )
        query = query.where(
            or_(
                col(RequestRow.requester_email) == contact.lower(),
                col(RequestRow.id).in_(asked),
            )
        )
    return list(session.exec(query.limit(limit)).all())


def events(session: Session, request_id: str) -> list[EventRow]:
    query = select(EventRow).where(EventRow.request_id == request_id).order_by(col(EventRow.id))
    return list(session.exec(query).all())


def due_expiries(session: Session, now: datetime) -> list[str]:
    """Pending requests past their expiry (index: status, expires_at)."""
    query = (
        select(RequestRow.id)
        .where(RequestRow.status == RequestStatus.PENDING, col(RequestRow.expires_at) <= now)
        .order_by(col(RequestRow.expires_at))
        .limit(SWEEP_BATCH)
    )
    return list(session.exec(query).all())


def due_reminders(session: Session, now: datetime) -> list[str]:
    """Requests with an awaited contact whose reminder is due (index: next_reminder_at)."""
    due = select(ValidationRow.request_id).where(col(ValidationRow.next_reminder_at) <= now)
    return _requests_among(session, due)


def due_held(session: Session, now: datetime) -> list[str]:
    """Requests with a held link-page decision whose undo window has passed
    (index: held_until)."""
    due = select(ValidationRow.request_id).where(col(ValidationRow.held_until) <= now)
    return _requests_among(session, due)


def _requests_among(session: Session, due: SelectOfScalar[str]) -> list[str]:
    """The requests (each once) that the validations ``due`` selects belong to.

    Asked as requests whose id is among them, not as DISTINCT over the
    validations: for a DISTINCT, SQLite walks the request_id index over the
    whole validation table to skip a sort, seconds at a million requests.
    """
    query = select(RequestRow.id).where(col(RequestRow.id).in_(due)).limit(SWEEP_BATCH)
    return list(session.exec(query).all())


def validation_by_undo(session: Session, digest: str) -> ValidationRow | None:
    """The validation whose held decision an undo link's token can withdraw."""
    return session.exec(select(ValidationRow).where(ValidationRow.undo_digest == digest)).first()


def requests_of(
    session: Session, email: str, contact_id: int | None, limit: int
) -> list[RequestRow]:
    """The requests someone opened or must validate: pending first, newest first."""
    asked = select(ValidationRow.request_id).where(ValidationRow.contact_id == contact_id)
    query = (
        select(RequestRow)
        .where(or_(col(RequestRow.requester_email) == email, col(RequestRow.id).in_(asked)))
        .order_by(
            col(RequestRow.status) != RequestStatus.PENDING,
            col(RequestRow.created_at).desc(),
            col(RequestRow.id),
        )
        .limit(limit)
    )
    return list(session.exec(query).all())


def confirmation_by_digest(session: Session, digest: str) -> ConfirmationRow | None:
    query = select(ConfirmationRow).where(ConfirmationRow.digest == digest)
    return session.exec(query.with_for_update()).first()


def confirmation_by_reply_key(session: Session, key_digest: str) -> ConfirmationRow | None:
    query = select(ConfirmationRow).where(ConfirmationRow.reply_key_digest == key_digest)
    return session.exec(query.with_for_update()).first()


def live_confirmation(
    session: Session, request_id: str, action: str, email: str, now: datetime
) -> ConfirmationRow | None:
    """A confirmation of the same action still awaited from the same address."""
    query = select(ConfirmationRow).where(
        ConfirmationRow.request_id == request_id,
        ConfirmationRow.email == email,
        ConfirmationRow.action == action,
        col(ConfirmationRow.used_at).is_(None),
        ConfirmationRow.expires_at > now,
    )
    return session.exec(query).first()


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
        ValidationRow.contact_id == contact_id, ValidationRow.status != ValidationStatus.PENDING
    )
    return session.exec(query.limit(1)).first() is not None
