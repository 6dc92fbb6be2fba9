"""Opening a request by mail: CHANGE, its role lines, who may ask and who validates."""

from __future__ import annotations

import json
from datetime import timedelta

from sqlmodel import Session

from mailbot import commands, tokens, workflow
from mailbot.addresses import normalise_email
from mailbot.domain import Party, Request, Role
from mailbot.errors import (
    NotAuthorized,
    UnknownContact,
    UnknownService,
)
from mailbot.service.context import ServiceContext
from mailbot.service.inbound import ReceivedMail
from mailbot.service.transitions import Event, Transitions
from mailbot.storage import queries
from mailbot.storage.tables import (
    ContactRow,
    RequestRow,
    RoleChangeRow,
    ValidationRow,
)


class Opening:
    """CHANGE by mail: who may ask, who the role lines name, and the new request."""

    def __init__(self, context: ServiceContext, transitions: Transitions) -> None:
        self.context = context
        self.settings = context.settings
        self.clock = context.clock
        self.transitions = transitions

    def by_mail(self, session: Session, message: ReceivedMail, command: commands.Command) -> str:
        """Open the request a CHANGE mail asks for, and ask its validations."""
        change = commands.parse_change(command, message.new_text)
        service_row = queries.service_row(session, change.service, for_update=True)
        if service_row is None:
            raise UnknownService("", service=change.service)
        assert service_row.id is not None
        service = queries.service(session, service_row)
        requester, is_operator = self._requester(session, message, service.name, command)
        wanted = {
            role: self._contact_for(session, target, role, requester.language)
            for role, target in change.wanted.items()
        }
        transition = workflow.open_request(
            request_id=self._new_request_id(session),
            service=service,
            requester=requester,
            requester_is_operator=is_operator,
            wanted=wanted,
            pending_roles=queries.pending_roles(session, service_row.id),
            now=self.clock.now(),
            ttl=timedelta(days=self.settings.policy.request_ttl_days),
        )
        request = transition.request
        row = self._save_new_request(session, request, service_row.id)
        opened = Event("request-opened", actor=message.sender, detail=_changes_detail(request))
        self.transitions.commit(session, row, transition, [opened], message)
        return f"request {request.id} opened for {service.name}"

    def _requester(
        self, session: Session, message: ReceivedMail, service: str, command: commands.Command
    ) -> tuple[Party, bool]:
        """The sender, if a contact or an operator may ask at all (the workflow
        decides what for), and whether they are an operator. An operator who is
        not a contact is written to in the language of their command."""
        contact = queries.contact_by_email(session, message.sender)
        is_operator = self.settings.is_operator(message.sender)
        if contact is not None:
            return queries.party(contact), is_operator
        if not is_operator:
            raise NotAuthorized("", service=service)
        language = "fr" if command.french else self.settings.bot.language
        return Party(email=message.sender, name=message.sender_name, language=language), True

    def _contact_for(self, session: Session, target: str, role: Role, language: str) -> Party:
        """The contact a role line names: a known handle or address, or a new address.

        A new address gets ``language``, the requester's: the person who names
        them is the best guess of the language they read.
        """
        if "@" in target:
            email = normalise_email(target)
            if email is None:
                raise UnknownContact("", contact=target[:100], role=role.value)
            contact = queries.contact_by_email(session, email)
            if contact is None:
                now = self.clock.now()
                contact = ContactRow(email=email, language=language, created_at=now, updated_at=now)
                session.add(contact)
                session.flush()
            return queries.party(contact)
        contact = queries.contact_by_handle(session, target)
        if contact is None:
            raise UnknownContact("", contact=target[:100], role=role.value)
        return queries.party(contact)

    def _new_request_id(self, session: Session) -> str:
        """A random id no stored request has."""
        while True:
            candidate = f"CR-{tokens.new_key(8)}"
            if queries.request_row(session, candidate) is None:
                return candidate

    def _save_new_request(self, session: Session, request: Request, service_id: int) -> RequestRow:
        """Insert the request, its role changes and its validations."""
        row = RequestRow(
            id=request.id,
            service_id=service_id,
            requester_email=request.requester.email,
            requester_id=request.requester.id,
            created_at=request.created_at,
            expires_at=request.expires_at,
        )
        session.add(row)
        session.flush()
        for change in request.changes:
            assert change.outgoing.id is not None
            assert change.incoming.id is not None
            session.add(
                RoleChangeRow(
                    request_id=request.id,
                    role=change.role.value,
                    from_contact_id=change.outgoing.id,
                    to_contact_id=change.incoming.id,
                )
            )
        first_reminder = workflow.next_reminder_at(
            request.created_at, 0, self.settings.policy.reminder_days
        )
        for validation in request.validations:
            assert validation.contact.id is not None
            session.add(
                ValidationRow(
                    request_id=request.id,
                    contact_id=validation.contact.id,
                    side=validation.side.value,
                    created_at=request.created_at,
                    next_reminder_at=first_reminder,
                )
            )
        session.flush()
        return row


def _changes_detail(request: Request) -> str:
    return json.dumps(
        [
            {"role": c.role.value, "from": c.outgoing.email, "to": c.incoming.email}
            for c in request.changes
        ]
    )
