"""The sweep, the scheduler's periodic job: held link-page decisions take effect,
stale requests expire, silent contacts are reminded.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlmodel import Session

from mailbot import workflow
from mailbot.domain import Channel
from mailbot.service.context import ServiceContext
from mailbot.service.deciding import decision_events
from mailbot.service.transitions import Event, Transitions
from mailbot.storage import queries
from mailbot.storage.engine import transaction
from mailbot.storage.tables import ContactRow, RequestRow

DueQuery = Callable[[Session, datetime], Sequence[str]]


@dataclass(frozen=True)
class SweepReport:
    expired: int = 0
    reminded: int = 0
    applied: int = 0
    """Held link-page decisions that took effect."""


class Sweeping:
    """Each request is handled in its own transaction, under its row lock."""

    def __init__(self, context: ServiceContext, transitions: Transitions) -> None:
        self.context = context
        self.transitions = transitions

    def sweep(self, now: datetime) -> SweepReport:
        """Apply due held decisions, expire, then remind.

        Held decisions go first, so that one made before the expiry counts.

        It reads only due rows, through indexes on their due times, and is safe
        beside another sweep: each request is handled under its row lock, and
        one whose lock is taken is left to the sweep that holds it.
        """
        applied = sum(self._apply_held(r, now) for r in self._due(queries.due_held, now))
        expired = sum(self._expire(r, now) for r in self._due(queries.due_expiries, now))
        reminded = sum(self._remind(r, now) for r in self._due(queries.due_reminders, now))
        self.context.limits.forget(now)
        return SweepReport(expired=expired, reminded=reminded, applied=applied)

    def _due(self, query: DueQuery, now: datetime) -> list[str]:
        with transaction(self.context.engine) as session:
            return list(query(session, now))

    def _expire(self, request_id: str, now: datetime) -> int:
        with transaction(self.context.engine) as session:
            row = _lock_unless_taken(session, request_id)
            if row is None:
                return 0
            transition = workflow.expire(queries.request(session, row), now)
            if not transition.effects:
                return 0
            self.transitions.commit(session, row, transition, [Event("request-expired")])
            return 1

    def _remind(self, request_id: str, now: datetime) -> int:
        with transaction(self.context.engine) as session:
            row = _lock_unless_taken(session, request_id)
            if row is None:
                return 0
            days = self.context.settings.policy.reminder_days
            transition = workflow.remind(queries.request(session, row), now, days)
            events = [
                Event("reminder-sent", contact_id=e.contact.id, detail=f"reminder {e.number}")
                for e in transition.effects
                if isinstance(e, workflow.Remind)
            ]
            assert len(events) == len(transition.effects)
            self.transitions.commit(session, row, transition, events)
            return len(transition.effects)

    def _apply_held(self, request_id: str, now: datetime) -> int:
        """Apply the held decisions of one request whose window has passed."""
        with transaction(self.context.engine) as session:
            row = _lock_unless_taken(session, request_id)
            if row is None:
                return 0
            applied = 0
            for validation in queries.validation_rows(session, row.id):
                if validation.held_until is None or validation.held_until > now:
                    continue
                contact = session.get(ContactRow, validation.contact_id)
                assert contact is not None
                request = queries.request(session, row)
                if not request.pending:  # closed meanwhile: nothing left to decide
                    validation.held_decision = validation.held_until = None
                    continue
                transition = workflow.apply_held(request, contact=queries.party(contact), now=now)
                events = decision_events(
                    transition, contact, Channel.WEB, contact.email, "held on the link page"
                )
                self.transitions.commit(session, row, transition, events)
                applied += 1
            return applied


def _lock_unless_taken(session: Session, request_id: str) -> RequestRow | None:
    """The request, locked for this sweep; None when another sweep holds its lock."""
    return queries.request_row(session, request_id, for_update=True, skip_locked=True)
