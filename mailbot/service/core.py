"""The shared part of the use cases: carrying out a transition's effects.

The use cases themselves live beside it, one family a module (opening,
deciding, lifecycle), and meet in ``mailbot.service.Mailbot``.
"""

from __future__ import annotations

import logging

from sqlalchemy.engine import Engine
from sqlmodel import Session

from mailbot import commands, tokens, workflow
from mailbot.clock import Clock, SystemClock
from mailbot.config import Settings
from mailbot.domain import Channel, Party, Request
from mailbot.errors import (
    BadToken,
    MailbotError,
)
from mailbot.mailparse import redact
from mailbot.outgoing.mailer import Mailer, OutgoingMail
from mailbot.service.inbound import ReceivedMail
from mailbot.service.limits import RateLimits
from mailbot.service.reporting import Reporting
from mailbot.storage import queries
from mailbot.storage.tables import (
    ContactRow,
    EventRow,
    RequestRow,
    TokenRow,
    ValidationRow,
)

log = logging.getLogger(__name__)


class ServiceCore:
    """What every use case shares: settings, database, clock, mailer, and the steps
    that write a transition back (state, effects, event log) in the caller's
    transaction."""

    def __init__(self, settings: Settings, engine: Engine, clock: Clock | None = None) -> None:
        self.settings = settings
        self.engine = engine
        self.clock = clock or SystemClock()
        self.mailer = Mailer(settings, self.clock)
        self.limits = RateLimits(settings.policy, engine, self.clock)
        self.reports = Reporting(settings, engine, self.clock)
        self.renderer = self.mailer.renderer
        self.on_mail_queued = self.mailer.on_mail_queued
        """Called after a commit that queued mail (``serve`` flushes the outbox then)."""

    def _save_state(self, session: Session, row: RequestRow, request: Request) -> None:
        """Write a transition's new state back: request status and each validation."""
        row.status = request.status.value
        row.closed_at = request.closed_at
        contacts = {v.contact.id: v for v in request.validations}
        days = self.settings.policy.reminder_days
        for stored in queries.validation_rows(session, row.id):
            state = contacts[stored.contact_id]
            stored.status = state.status.value
            stored.channel = state.channel.value if state.channel else None
            stored.decided_at = state.decided_at
            stored.actor_email = state.actor
            stored.reminders_sent = state.reminders_sent
            stored.held_decision = state.held.value if state.held else None
            stored.held_until = state.held_until
            stored.next_reminder_at = (
                workflow.next_reminder_at(request.created_at, state.reminders_sent, days)
                if request.pending and state.pending
                else None
            )

    def _record_decision(
        self,
        session: Session,
        request_row: RequestRow,
        contact: ContactRow,
        transition: workflow.Transition,
        channel: Channel,
        actor: str | None,
        message: ReceivedMail | None = None,
        detail: str = "",
    ) -> Request:
        """Write a decision's transition back: state, event log and effects."""
        request = transition.request
        decided = request.validation_of(queries.party(contact))
        assert decided is not None
        self._save_state(session, request_row, request)
        self._log(
            session,
            request.id,
            f"validation-{decided.status.value}",
            detail=detail,
            actor=actor,
            contact_id=contact.id,
            channel=channel.value,
            inbound_id=message.id if message else None,
        )
        if not request.pending:
            self._log(
                session,
                request.id,
                f"request-{request.status.value}",
                actor=actor,
                inbound_id=message.id if message else None,
            )
        self._carry_out(session, request, transition.effects, message)
        return request

    def _carry_out(
        self,
        session: Session,
        request: Request,
        effects: tuple[workflow.Effect, ...],
        message: ReceivedMail | None,
    ) -> None:
        for effect in effects:
            if isinstance(effect, workflow.ApplyHolders):
                self._apply_holders(session, effect)
            elif isinstance(effect, workflow.AskToValidate):
                if effect.replace:
                    self._revoke_tokens(session, request, effect.contact)
                self._send_token(session, request, effect.contact, message)
            elif isinstance(effect, workflow.Remind):
                self._send_token(session, request, effect.contact, message, effect.number)
            elif isinstance(effect, workflow.ConfirmHeld):
                self._send_undo(session, request, effect)
            else:
                for party in effect.recipients:
                    mail = OutgoingMail(effect.event, party, request, context=dict(effect.about))
                    self.mailer.queue(session, mail, message)

    def _apply_holders(self, session: Session, effect: workflow.ApplyHolders) -> None:
        row = queries.service_row(session, effect.service, for_update=True)
        assert row is not None
        for role, holder in effect.holders.items():
            assert holder.id is not None
            setattr(row, f"{role.value}_id", holder.id)
        row.updated_at = self.clock.now()

    def _validation_row(self, session: Session, request: Request, contact: Party) -> ValidationRow:
        return next(
            v for v in queries.validation_rows(session, request.id) if v.contact_id == contact.id
        )

    def _revoke_tokens(self, session: Session, request: Request, contact: Party) -> None:
        validation = self._validation_row(session, request, contact)
        assert validation.id is not None
        for token in queries.live_tokens(session, validation.id):
            token.used_at = self.clock.now()

    def _send_token(
        self,
        session: Session,
        request: Request,
        contact: Party,
        message: ReceivedMail | None,
        reminder: int | None = None,
    ) -> None:
        """A fresh token for the contact, in a validation mail or a reminder."""
        validation = self._validation_row(session, request, contact)
        assert validation.id is not None
        token, reply_key = tokens.new_token(), tokens.new_key()
        session.add(
            TokenRow(
                validation_id=validation.id,
                digest=tokens.digest(token),
                reply_key_digest=tokens.digest(reply_key),
                issued_at=self.clock.now(),
            )
        )
        bot = self.settings.bot
        reply_address = f"{bot.local_part}+{reply_key.lower()}@{bot.domain}"
        side = request.validation_of(contact)
        self.mailer.queue(
            session,
            OutgoingMail(
                "validation-requested" if reminder is None else "reminder",
                contact,
                request,
                context={
                    "token": tokens.group(token),
                    "link": f"{bot.base_url}/v/{token}",
                    "reply_address": reply_address,
                    "side": side.side.value if side else "new",
                    "reminder_number": reminder,
                },
                validation_id=validation.id,
                reply_to=reply_address,
                carries_secret=True,
            ),
            message,
        )

    def _send_undo(self, session: Session, request: Request, effect: workflow.ConfirmHeld) -> None:
        """Tell the contact what the link page recorded, with a fresh single-use undo link."""
        validation = self._validation_row(session, request, effect.contact)
        undo_token = tokens.new_token()
        validation.undo_digest = tokens.digest(undo_token)
        self.mailer.queue(
            session,
            OutgoingMail(
                "decision-held",
                effect.contact,
                request,
                context={
                    "decision": effect.decision.value,
                    "until": effect.until,
                    "minutes": self.settings.web.undo_minutes,
                    "undo_link": f"{self.settings.bot.base_url}/u/{undo_token}",
                },
                validation_id=validation.id,
                carries_secret=True,
            ),
            None,
        )

    def _reject(
        self,
        session: Session,
        message: ReceivedMail,
        error: MailbotError,
        command: commands.Command | None,
    ) -> bool:
        """Answer a command that failed with an error mail, and log it.

        Returns False when nothing is sent: the address had its share of
        answers this hour, or it is unknown and had its one answer today (a
        loop, a flood or backscatter ends here); the error is still recorded.
        A known sender is shown what was read from their mail, tokens and
        reply keys taken out; an unknown one gets a generic text (see Mailer).
        """
        contact = queries.contact_by_email(session, message.sender)
        language = (
            contact.language
            if contact is not None
            else "fr"
            if command is not None and command.french
            else self.settings.bot.language
        )
        to = Party(
            id=contact.id if contact else None,
            email=message.sender,
            name=contact.name if contact else "",
            language=language,
        )
        self._log(
            session,
            self._existing_request(session, error.context.get("request")),
            f"error:{error.code}",
            actor=message.sender,
            inbound_id=message.id,
            detail=error.detail,
        )
        if self.mailer.answers_exhausted(session, message.sender):
            return False
        local = self.settings.bot.local_part
        shown = MailbotError(
            redact.text(error.detail, local),
            **{k: redact.text(v, local) for k, v in error.context.items()},
        )
        shown.code = error.code
        return self.mailer.queue(
            session,
            OutgoingMail(
                "error",
                to,
                context={
                    "error": shown,
                    "command": redact.text(command.line, local) if command else "",
                    "original_subject": redact.text(message.subject[:200], local),
                },
                error_code=error.code,
            ),
            message,
        )

    def _existing_request(self, session: Session, request_id: str | None) -> str | None:
        """An error's request id for the event log, when it names a stored request."""
        if request_id is None or queries.request_row(session, request_id) is None:
            return None
        return request_id

    def _log(
        self,
        session: Session,
        request_id: str | None,
        kind: str,
        *,
        actor: str | None = None,
        contact_id: int | None = None,
        channel: str | None = None,
        inbound_id: int | None = None,
        detail: str = "",
    ) -> None:
        if kind == f"error:{BadToken.code}" and actor:
            self.limits.bad_tokens.record(session, actor, self.clock.now())
        session.add(
            EventRow(
                at=self.clock.now(),
                request_id=request_id,
                kind=kind,
                actor_email=actor,
                contact_id=contact_id,
                channel=channel,
                inbound_id=inbound_id,
                detail=redact.text(detail, self.settings.bot.local_part),
            )
        )
