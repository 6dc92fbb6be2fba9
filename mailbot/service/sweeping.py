"""The sweep, the scheduler's periodic job: held link-page decisions take effect,
stale requests expire, silent contacts are reminded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from mailbot import workflow
from mailbot.domain import Channel
from mailbot.service.context import ServiceContext
from mailbot.service.deciding import decision_events
from mailbot.service.sweep_batch import SweepChunk, without_hold
from mailbot.service.transitions import Event, Transitions
from mailbot.storage import queries
from mailbot.storage.engine import transaction

Step = Callable[[SweepChunk, str, datetime], int]
"""What one pass does to one due request of a chunk; returns how many it did."""
Pass = tuple[set[str], Step]
"""The requests due for a step, and the step."""


@dataclass(frozen=True)
class SweepReport:
    expired: int = 0
    reminded: int = 0
    applied: int = 0
    """Held link-page decisions that took effect."""


CHUNK = 500
"""Due requests handled in one transaction: one commit, a few statements per table."""


class Sweeping:
    """Due requests are handled in chunks, each in one transaction under the row
    locks of its requests (see ``sweep_batch``)."""

    def __init__(self, context: ServiceContext, transitions: Transitions) -> None:
        self.context = context
        self.transitions = transitions

    def sweep(self, now: datetime) -> SweepReport:
        """Apply due held decisions, expire, then remind.

        Held decisions go first, so that one made before the expiry counts.

        Each request is handled once, all its due steps in that order; up to
        ``CHUNK`` requests share a transaction (one commit).

        It reads only due rows, through indexes on their due times, and is safe
        beside another sweep: each chunk locks its requests, leaves those whose
        lock another sweep holds to that sweep, and decides each request from
        its state read under the lock, so a request another sweep handled
        meanwhile is no longer due.
        """
        with transaction(self.context.engine) as session:
            passes: list[Pass] = [
                (set(query(session, now)), step)
                for query, step in (
                    (queries.due_held, self._apply_held),
                    (queries.due_expiries, self._expire),
                    (queries.due_reminders, self._remind),
                )
            ]
        ids = sorted(set().union(*(due for due, _ in passes)))
        done = [0, 0, 0]
        for start in range(0, len(ids), CHUNK):
            found = self._chunk(ids[start : start + CHUNK], now, passes)
            done = [a + b for a, b in zip(done, found, strict=True)]
        self.context.limits.forget(now)
        return SweepReport(applied=done[0], expired=done[1], reminded=done[2])

    def _chunk(self, ids: list[str], now: datetime, passes: list[Pass]) -> list[int]:
        """Every due step of each request of the chunk, held decisions first, in one
        transaction; how many each pass did."""
        done = [0] * len(passes)
        with transaction(self.context.engine) as session:
            chunk = SweepChunk(session, self.transitions, ids, now)
            for request_id in chunk.requests:
                for index, (due, step) in enumerate(passes):
                    if request_id in due:
                        done[index] += step(chunk, request_id, now)
            chunk.write()
            if chunk.queued:
                self.context.mailer.notify_on_commit(session)
        return done

    def _expire(self, chunk: SweepChunk, request_id: str, now: datetime) -> int:
        transition = workflow.expire(chunk.request(request_id), now)
        if not transition.effects:
            return 0
        chunk.commit(request_id, transition, [Event("request-expired")])
        return 1

    def _remind(self, chunk: SweepChunk, request_id: str, now: datetime) -> int:
        days = self.context.settings.policy.reminder_days
        transition = workflow.remind(chunk.request(request_id), now, days)
        events = [
            Event("reminder-sent", contact_id=e.contact.id, detail=f"reminder {e.number}")
            for e in transition.effects
            if isinstance(e, workflow.Remind)
        ]
        assert len(events) == len(transition.effects)
        chunk.commit(request_id, transition, events)
        return len(transition.effects)

    def _apply_held(self, chunk: SweepChunk, request_id: str, now: datetime) -> int:
        """Apply the held decisions of one request whose window has passed."""
        applied = 0
        for contact in chunk.held_contacts(request_id):
            request = chunk.request(request_id)
            validation = request.validation_of(contact)
            if validation is None or validation.held_until is None or validation.held_until > now:
                continue
            if not request.pending:  # closed meanwhile: nothing left to decide
                chunk.set_state(without_hold(request, contact))
                continue
            transition = workflow.apply_held(request, contact=contact, now=now)
            events = decision_events(
                transition, contact, Channel.WEB, contact.email, "held on the link page"
            )
            chunk.commit(request_id, transition, events)
            applied += 1
        return applied
