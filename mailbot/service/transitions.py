"""The one step every use case ends with: commit a transition.

The workflow computes a transition (the new state of a request and its
effects) without I/O; this step writes it back in the caller's transaction:
the state, the event log, then the effects (mails, tokens, role holders).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlmodel import Session

from mailbot import logs, metrics, workflow
from mailbot.domain import Channel, Request, Validation
from mailbot.errors import BadToken
from mailbot.mailparse import redact
from mailbot.service.context import ServiceContext
from mailbot.service.effects import Effects
from mailbot.service.inbound import ReceivedMail
from mailbot.storage import queries
from mailbot.storage.tables import EventRow, RequestRow


@dataclass(frozen=True)
class Event:
    """One line of the event log, as a use case names it; the request, the time
    and the mail that caused it are filled in when it is written."""

    kind: str
    actor: str | None = None
    contact_id: int | None = None
    channel: Channel | None = None
    detail: str = ""


class Transitions:
    """Writes transitions and events back; shared by every use case."""

    def __init__(self, context: ServiceContext, effects: Effects) -> None:
        self.context = context
        self.effects = effects

    def commit(
        self,
        session: Session,
        row: RequestRow,
        transition: workflow.Transition,
        events: Sequence[Event],
        mail: ReceivedMail | None = None,
    ) -> Request:
        """Save the new state, log ``events`` against the request, carry out the
        effects; returns the new state of the request."""
        request = transition.request
        self.save_state(session, row, request)
        for event in events:
            self.log(session, row.id, event, mail.id if mail else None)
        self.effects.carry_out(session, request, transition.effects, mail)
        return request

    def save_state(self, session: Session, row: RequestRow, request: Request) -> None:
        """Write a request's state back: its status and each of its validations."""
        row.status = request.status.value
        row.closed_at = request.closed_at
        contacts = {v.contact.id: v for v in request.validations}
        for stored in queries.validations_read(session, row.id):
            for name, value in self.validation_values(request, contacts[stored.contact_id]).items():
                setattr(stored, name, value)

    def validation_values(self, request: Request, state: Validation) -> dict[str, Any]:
        """The stored columns of one validation of ``request`` in ``state``."""
        days = self.context.settings.policy.reminder_days
        return {
            "status": state.status.value,
            "channel": state.channel.value if state.channel else None,
            "decided_at": state.decided_at,
            "actor_email": state.actor,
            "reminders_sent": state.reminders_sent,
            "held_decision": state.held.value if state.held else None,
            "held_until": state.held_until,
            "next_reminder_at": (
                workflow.next_reminder_at(request.created_at, state.reminders_sent, days)
                if request.pending and state.pending
                else None
            ),
        }

    def log(
        self,
        session: Session,
        request_id: str | None,
        event: Event,
        inbound_id: int | None = None,
    ) -> None:
        """Add ``event`` to the log, tokens and reply keys taken out of its detail.
        A wrong token also counts toward its sender's limit."""
        logs.note_request(session.info, request_id)
        if event.kind == f"error:{BadToken.code}" and event.actor:
            self.context.limits.bad_tokens.record(session, event.actor, self.context.clock.now())
            metrics.bad_token("email")
        session.add(EventRow(**self.event_values(request_id, event, inbound_id)))

    def event_values(
        self, request_id: str | None, event: Event, inbound_id: int | None = None
    ) -> dict[str, Any]:
        """The stored columns of one line of the log, tokens and reply keys taken out."""
        return {
            "at": self.context.clock.now(),
            "request_id": request_id,
            "kind": event.kind,
            "actor_email": event.actor,
            "contact_id": event.contact_id,
            "channel": event.channel.value if event.channel else None,
            "inbound_id": inbound_id,
            "detail": redact.text(event.detail, self.context.settings.bot.local_part),
        }
