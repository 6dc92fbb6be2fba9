"""One chunk of a sweep: its due requests locked and loaded at once, and the rows
their transitions write, written at once, in one transaction.

A sweep over a thousand due requests would otherwise spend its time in
per-request round trips and commits (a dozen statements and one durable
commit each). Here a chunk reads its requests, their validations, role
changes, services and contacts in one statement each, the workflow's pure
functions decide each request in turn, and the state, the event log, the
tokens and the queued mail go back in one statement per table.

What one request's transition changes that a later request of the same chunk
reads is kept in memory as it would be in the database: a service's new role
holders (a done request), whom mailbot may now write to freely (a contact that
decided, a new holder). The per-mail checks of ``Mailer.queue`` are asked
for the chunk's recipients at once; an address that is not trusted is asked
about singly, after the mail queued so far is written, as ``Mailer.queue``
asks it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlmodel import Session, SQLModel

from mailbot import logs, workflow
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
from mailbot.outgoing import intents
from mailbot.outgoing.mailer import ANSWER_EVENTS, OutgoingMail
from mailbot.service.transitions import Event, Transitions
from mailbot.storage import mail_queries, queries
from mailbot.storage.tables import (
    ContactRow,
    EventRow,
    OutboxRow,
    RequestRow,
    RoleChangeRow,
    ServiceRow,
    TokenRow,
    ValidationRow,
)


def _table(model: type[SQLModel]) -> sa.Table:
    """The Core table of a model: rows read and written without the ORM's cost per row."""
    table = model.metadata.tables[str(model.__tablename__)]
    assert isinstance(table, sa.Table)
    return table


REQUESTS = _table(RequestRow)
VALIDATIONS = _table(ValidationRow)
CHANGES = _table(RoleChangeRow)
SERVICES = _table(ServiceRow)
CONTACTS = _table(ContactRow)
EVENTS = _table(EventRow)
TOKENS = _table(TokenRow)
OUTBOX = _table(OutboxRow)
ROLES = (Role.ADMIN, Role.TECH, Role.BILLING)
Row = sa.Row[Any]


def _read(table: sa.Table, *unread: str) -> list[sa.Column[Any]]:
    """The columns of ``table`` a chunk reads: a timestamp it never reads would
    cost a conversion per row (on SQLite, parsing a string)."""
    return [column for column in table.columns if column.name not in unread]


CONTACT_COLUMNS = _read(CONTACTS, "created_at", "updated_at")
SERVICE_COLUMNS = _read(SERVICES, "updated_at")
VALIDATION_COLUMNS = _read(VALIDATIONS, "created_at")


class SweepChunk:
    """The locked requests of one chunk, their state as it changes, and the writes."""

    def __init__(
        self, session: Session, transitions: Transitions, ids: Sequence[str], now: datetime
    ) -> None:
        self.session = session
        self.connection = session.connection()
        self.transitions = transitions
        self.context = transitions.context
        self.now = now
        self.requests = self._lock(ids)
        self.validations = self._by_request(VALIDATIONS, VALIDATION_COLUMNS)
        self.changes = self._by_request(CHANGES, list(CHANGES.columns))
        self.holders = self._holders()
        self.contacts = self._contacts()
        self.parties: dict[int, Party] = {}
        self.by_email = {row.email: row for row in self.contacts.values()}
        self.roles_held = self._roles_held()
        self.decided = self._decided()
        self.sent_today = self._sent_today()
        self.states: dict[str, Request] = {}
        self.changed: dict[str, None] = {}
        """The requests whose state is written back, in the order they changed."""
        self.events: list[dict[str, Any]] = []
        self.tokens: list[dict[str, Any]] = []
        self.outbox: list[dict[str, Any]] = []
        self.service_updates: dict[int, dict[str, Any]] = {}
        """The columns to set on each service whose holders changed."""
        self.request_json: dict[str, tuple[Request, str]] = {}
        self.queued = False
        """Whether mail was written to the outbox."""

    # -- loading ------------------------------------------------------------------

    def _among(self, column: sa.Column[Any], values: Iterable[Any]) -> sa.ColumnElement[bool]:
        """``column IN values``: on PostgreSQL as one array (``= ANY``), which it
        parses and plans in a fraction of the time of a thousand parameters."""
        if self.connection.dialect.name == "postgresql":
            array = sa.bindparam(None, list(values), type_=postgresql.ARRAY(column.type))
            return column == sa.any_(array)
        return column.in_(list(values))

    def _lock(self, ids: Sequence[str]) -> dict[str, Row]:
        """The chunk's requests, locked; those another sweep holds are left to it."""
        query = (
            sa.select(REQUESTS)
            .where(self._among(REQUESTS.c.id, ids))
            .with_for_update(skip_locked=True)
        )
        found = {row.id: row for row in self.connection.execute(query)}
        return {request_id: found[request_id] for request_id in ids if request_id in found}

    def _by_request(self, table: sa.Table, columns: list[sa.Column[Any]]) -> dict[str, list[Row]]:
        grouped: dict[str, list[Row]] = {request_id: [] for request_id in self.requests}
        if self.requests:
            query = (
                sa.select(*columns)
                .where(self._among(table.c.request_id, self.requests))
                .order_by(table.c.id)
            )
            for row in self.connection.execute(query):
                grouped[row.request_id].append(row)
        return grouped

    def _holders(self) -> dict[int, dict[Role, int]]:
        """Each service's role holders (contact ids), as they change in this chunk."""
        ids = {row.service_id for row in self.requests.values()}
        self.services: dict[int, Row] = {}
        if ids:
            query = sa.select(*SERVICE_COLUMNS).where(self._among(SERVICES.c.id, ids))
            self.services = {row.id: row for row in self.connection.execute(query)}
        return {
            service_id: {role: getattr(row, f"{role.value}_id") for role in ROLES}
            for service_id, row in self.services.items()
        }

    def _contacts(self) -> dict[int, Row]:
        ids = {i for holders in self.holders.values() for i in holders.values()}
        ids |= {r.requester_id for r in self.requests.values() if r.requester_id is not None}
        ids |= {v.contact_id for rows in self.validations.values() for v in rows}
        for rows in self.changes.values():
            ids |= {c.from_contact_id for c in rows} | {c.to_contact_id for c in rows}
        if not ids:
            return {}
        query = sa.select(*CONTACT_COLUMNS).where(self._among(CONTACTS.c.id, ids))
        return {row.id: row for row in self.connection.execute(query)}

    def _unhandled(self) -> list[int]:
        """Contacts whom only a role or a decision makes trusted (no handle)."""
        return [i for i, row in self.contacts.items() if row.handle is None]

    def _roles_held(self) -> Counter[int]:
        """How many roles each contact without a handle holds, across all services."""
        held: Counter[int] = Counter()
        ids = self._unhandled()
        if ids:
            for role in ROLES:
                column = SERVICES.c[f"{role.value}_id"]
                query = sa.select(column).where(self._among(column, ids))
                held.update(row[0] for row in self.connection.execute(query))
        return held

    def _decided(self) -> set[int]:
        """Contacts without a handle that ever decided a validation: asked as
        whether one such validation exists, which stops at the first found,
        where a contact named in many requests has many validations."""
        ids = self._unhandled()
        if not ids:
            return set()
        decided = sa.exists().where(
            VALIDATIONS.c.contact_id == CONTACTS.c.id,
            VALIDATIONS.c.status != ValidationStatus.PENDING,
        )
        query = sa.select(CONTACTS.c.id).where(self._among(CONTACTS.c.id, ids), decided)
        return {row[0] for row in self.connection.execute(query)}

    def _sent_today(self) -> Counter[str]:
        """Mail of the last day to the mailboxes of the contacts mailbot does not
        trust when the chunk begins, for ``Mailer.held_back``; kept up to date
        as the chunk queues mail."""
        strangers = [
            row.email
            for i, row in self.contacts.items()
            if row.handle is None and self.roles_held[i] <= 0 and i not in self.decided
        ]
        since = self.context.clock.now() - timedelta(days=1)
        counts = Counter({mail_queries.mailbox(e): 0 for e in strangers})
        counts.update(mail_queries.mails_to_mailboxes_since(self.session, strangers, since))
        return counts  # zero counts kept: they name the mailboxes asked about

    # -- the state, in domain terms -------------------------------------------------

    def request(self, request_id: str) -> Request:
        """The request as it stands now, with its service's holders as they stand now."""
        found = self.states.get(request_id)
        if found is not None:
            return found
        row = self.requests[request_id]
        service = self.services[row.service_id]
        requester = (
            self._party(row.requester_id)
            if row.requester_id is not None
            else Party(email=row.requester_email)
        )
        request = Request(
            id=row.id,
            service=Service(
                service.name,
                {role: self._party(i) for role, i in self.holders[row.service_id].items()},
                service.in_good_standing,
                service.kind,
            ),
            requester=requester,
            changes=tuple(
                RoleChange(
                    Role(c.role), self._party(c.from_contact_id), self._party(c.to_contact_id)
                )
                for c in self.changes[request_id]
            ),
            validations=tuple(self._validation(v) for v in self.validations[request_id]),
            created_at=row.created_at,
            expires_at=row.expires_at,
            status=RequestStatus(row.status),
            closed_at=row.closed_at,
        )
        self.states[request_id] = request
        return request

    def _party(self, contact_id: int) -> Party:
        found = self.parties.get(contact_id)
        if found is None:
            found = self.parties[contact_id] = queries.party(self.contacts[contact_id])
        return found

    def _validation(self, row: Row) -> Validation:
        return Validation(
            contact=self._party(row.contact_id),
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

    def held_contacts(self, request_id: str) -> list[Party]:
        """The contacts of a request whose held decision was due when it was loaded,
        in the order of their validations."""
        return [
            self._party(v.contact_id)
            for v in self.validations[request_id]
            if v.held_until is not None and v.held_until <= self.now
        ]

    # -- changes ------------------------------------------------------------------

    def commit(
        self, request_id: str, transition: workflow.Transition, events: Iterable[Event]
    ) -> None:
        """What ``Transitions.commit`` does for one request, kept for ``write``."""
        request = transition.request
        self.set_state(request)
        logs.note_request(self.session.info, request_id)
        for validation in request.validations:
            if not validation.pending and validation.contact.id is not None:
                self.decided.add(validation.contact.id)
        self.events += [self.transitions.event_values(request_id, e) for e in events]
        for effect in transition.effects:
            self._carry_out(request, effect)

    def set_state(self, request: Request) -> None:
        """A new state of a request, written back by ``write``."""
        self.states[request.id] = request
        self.changed[request.id] = None

    def _carry_out(self, request: Request, effect: workflow.Effect) -> None:
        if isinstance(effect, workflow.Remind):
            validation = next(
                v.id for v in self.validations[request.id] if v.contact_id == effect.contact.id
            )
            effects = self.transitions.effects
            token, mail = effects.token_mail(request, effect.contact, validation, effect.number)
            self.tokens.append(token)
            self.queue(mail)
        elif isinstance(effect, workflow.Notify):
            for party in effect.recipients:
                self.queue(OutgoingMail(effect.event, party, request, context=dict(effect.about)))
        elif isinstance(effect, workflow.ApplyHolders):
            self._apply_holders(request, effect)
        else:  # tokens and undo links are never the sweep's to send
            raise AssertionError(f"a sweep cannot carry out {effect}")

    def _apply_holders(self, request: Request, effect: workflow.ApplyHolders) -> None:
        """The service's new holders, kept for ``write`` and for the chunk's later requests."""
        service_id = self.requests[request.id].service_id
        holders = self.holders[service_id]
        values = self.service_updates.setdefault(service_id, {})
        values["updated_at"] = self.context.clock.now()
        for role, holder in effect.holders.items():
            assert holder.id is not None
            self.roles_held[holders[role]] -= 1
            self.roles_held[holder.id] += 1
            holders[role] = holder.id
            values[f"{role.value}_id"] = holder.id

    def queue(self, mail: OutgoingMail) -> None:
        """``Mailer.queue`` for a chunk: the same checks, the row written later."""
        assert mail.event not in ANSWER_EVENTS
        mailer = self.context.mailer
        trusted = self._trusts(mail.to.email)
        box = mail_queries.mailbox(mail.to.email)
        if not trusted:
            if box in self.sent_today:
                held = mailer.over_cap(self.sent_today[box])
            else:  # a stranger only since the chunk began (a role given up)
                self._write_outbox()  # counted as Mailer.queue counts them
                held = mailer.held_back(self.session, mail)
            if held:
                self.events.append(mailer.held_event(mail, held))
                return
        if box in self.sent_today:
            self.sent_today[box] += 1
        known = None
        if mail.request is not None:  # encoded once for all its mails
            cached = self.request_json.get(mail.request.id)
            if cached is None or cached[0] is not mail.request:
                cached = (mail.request, intents.request_json(mail.request))
                self.request_json[mail.request.id] = cached
            known = cached[1]
        self.outbox.append(mailer.outbox_values(mail, None, trusted, known))

    def _trusts(self, address: str) -> bool:
        """``Mailer.trusts`` from what the chunk loaded and changed."""
        contact = self.by_email.get(address.lower())
        if contact is None:
            return self.context.mailer.trusts(self.session, address)
        return (
            self.context.settings.is_operator(address)
            or contact.handle is not None
            or self.roles_held[contact.id] > 0
            or contact.id in self.decided
        )

    # -- writing ------------------------------------------------------------------

    def write(self) -> None:
        """Write every change of the chunk: one statement per table."""
        self._write_states()
        self._write_services()
        if self.events:
            self.connection.execute(sa.insert(EVENTS), self.events)
        if self.tokens:
            self.connection.execute(sa.insert(TOKENS), self.tokens)
        self._write_outbox()

    def _write_outbox(self) -> None:
        if self.outbox:
            self.connection.execute(sa.insert(OUTBOX), self.outbox)
            self.outbox = []
            self.queued = True

    def _write_services(self) -> None:
        """The services' new holders, one statement for each set of roles changed,
        in the order of their ids (as any transaction should lock them)."""
        by_columns: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        for service_id, values in sorted(self.service_updates.items()):
            by_columns.setdefault(tuple(sorted(values)), []).append({"key": service_id, **values})
        update = SERVICES.update().where(SERVICES.c.id == sa.bindparam("key"))
        for rows in by_columns.values():
            self.connection.execute(update, rows)

    def _write_states(self) -> None:
        requests, validations = [], []
        for request_id in self.changed:
            request, row = self.states[request_id], self.requests[request_id]
            if (row.status, row.closed_at) != (request.status.value, request.closed_at):
                requests.append(
                    {
                        "key": request_id,
                        "status": request.status.value,
                        "closed_at": request.closed_at,
                    }
                )
            states = {v.contact.id: v for v in request.validations}
            for stored in self.validations[request_id]:
                values = self.transitions.validation_values(request, states[stored.contact_id])
                if any(getattr(stored, name) != value for name, value in values.items()):
                    validations.append({"key": stored.id, **values})
        # the parameters name the columns to set; "key" names the row
        if requests:
            update = REQUESTS.update().where(REQUESTS.c.id == sa.bindparam("key"))
            self.connection.execute(update, requests)
        if validations:
            update = VALIDATIONS.update().where(VALIDATIONS.c.id == sa.bindparam("key"))
            self.connection.execute(update, validations)


def without_hold(request: Request, contact: Party) -> Request:
    """The request with ``contact``'s held decision dropped (a closed request's)."""
    return replace(
        request,
        validations=tuple(
            replace(v, held=None, held_until=None) if v.contact.same_as(contact) else v
            for v in request.validations
        ),
    )
