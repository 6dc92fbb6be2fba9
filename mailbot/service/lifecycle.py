"""Following and steering requests: STATUS, LIST, CANCEL, RESEND, and the sweep
that reminds the silent and expires what is stale.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlmodel import Session

from mailbot import commands, mailparse, tokens, workflow
from mailbot.domain import Channel, Party, Request
from mailbot.errors import (
    BadToken,
    MalformedRequest,
    NotAuthorized,
    TokenUsed,
    TooManyAttempts,
)
from mailbot.outgoing.mailer import OutgoingMail
from mailbot.service.core import ServiceCore
from mailbot.service.inbound import ReceivedMail
from mailbot.storage import queries
from mailbot.storage.engine import transaction
from mailbot.storage.tables import (
    ConfirmationRow,
    ContactRow,
    RequestRow,
)
from mailbot.views import RequestView

log = logging.getLogger(__name__)


LIST_LIMIT = 50
CONFIRMATION_TTL = timedelta(days=2)
"""How long a CANCEL or RESEND by mail waits for its sender's address to confirm it."""
OPERATOR_ACTOR = "operator@cli"
"""How the event log names an operator acting through the CLI."""


class UnknownRequest(LookupError):
    """An operator named a request that does not exist."""


@dataclass(frozen=True)
class SweepReport:
    expired: int = 0
    reminded: int = 0
    applied: int = 0
    """Held link-page decisions that took effect."""


@dataclass(frozen=True)
class ListEntry:
    """One line of a LIST answer."""

    request: RequestView
    awaits_you: bool
    you_requested: bool


class LifecycleCases(ServiceCore):
    def _actor(self, session: Session, message: ReceivedMail) -> tuple[Party, bool]:
        """The sender as a party, and whether they are an operator."""
        contact = queries.contact_by_email(session, message.sender)
        party = queries.party(contact) if contact else Party(email=message.sender)
        return party, self.settings.is_operator(message.sender)

    def _party_request(
        self, session: Session, message: ReceivedMail, command: commands.Command
    ) -> RequestRow:
        """The request a command names, if the sender may see it.

        Anyone else gets the same answer as for an id that does not exist, so
        that request ids cannot be probed.
        """
        if not commands.is_request_id(command.argument):
            raise MalformedRequest("a request id looks like CR-7K2QX9MD", line=command.line)
        row = queries.request_row(session, command.argument.strip(), for_update=True)
        if row is None or not self._may_follow(session, row, self._actor(session, message)):
            raise NotAuthorized("no such request among yours", line=command.line)
        return row

    def _may_follow(self, session: Session, row: RequestRow, actor: tuple[Party, bool]) -> bool:
        """Operators, the request's parties and the service's admin may follow a request."""
        request = queries.request(session, row)
        party, operator = actor
        return operator or any(p.same_as(party) for p in (*request.parties, request.service.admin))

    def _answer(
        self,
        session: Session,
        message: ReceivedMail,
        event: str,
        context: dict[str, Any],
        request: Request | None = None,
    ) -> str:
        """Answer a question (help, status, list) by mail, within the answer rate limit."""
        if self.mailer.answers_exhausted(session, message.sender):
            return f"{event} not sent: rate limit"
        party, _ = self._actor(session, message)
        answer = OutgoingMail(event, party, request, context=context)
        if not self.mailer.queue(session, answer, message):
            return f"{event} not sent: held back (answers to unknown addresses)"
        return f"{event} sent to {message.sender}"

    def _list_by_mail(self, session: Session, message: ReceivedMail) -> str:
        party, _ = self._actor(session, message)
        rows = queries.requests_of(session, party.email, party.id, LIST_LIMIT + 1)
        entries = []
        for row in rows[:LIST_LIMIT]:
            request = queries.request(session, row)
            own = request.validation_of(party)
            entries.append(
                ListEntry(
                    RequestView.of(request),
                    awaits_you=bool(own and own.pending and request.pending),
                    you_requested=request.requester.same_as(party),
                )
            )
        context = {"entries": entries, "truncated": len(rows) > LIST_LIMIT, "limit": LIST_LIMIT}
        return self._answer(session, message, "list", context)

    def _cancel(
        self,
        session: Session,
        row: RequestRow,
        actor: tuple[Party, bool],
        message: ReceivedMail | None,
        how: str = "",
    ) -> str:
        by, operator = actor
        transition = workflow.cancel(
            queries.request(session, row), by=by, by_operator=operator, now=self.clock.now()
        )
        self._save_state(session, row, transition.request)
        self._log(
            session,
            row.id,
            "request-cancelled",
            actor=by.email,
            inbound_id=message.id if message else None,
            detail=how,
        )
        self._carry_out(session, transition.request, transition.effects, message)
        return f"request {row.id} cancelled by {by.email}"

    def _resend(
        self,
        session: Session,
        row: RequestRow,
        actor: tuple[Party, bool],
        message: ReceivedMail | None,
        how: str = "",
    ) -> str:
        by, operator = actor
        if not self.limits.resends.allows(session, row.id, self.clock.now()):
            raise TooManyAttempts("tokens were resent less than an hour ago", request=row.id)
        request = queries.request(session, row)
        transition = workflow.resend(request, by=by, by_operator=operator)
        self.limits.resends.record(session, row.id, self.clock.now())
        self._log(
            session,
            row.id,
            "tokens-resent",
            actor=by.email,
            inbound_id=message.id if message else None,
            detail=", ".join(
                e.contact.email for e in transition.effects if isinstance(e, workflow.AskToValidate)
            )
            + (f"; {how}" if how else ""),
        )
        self._carry_out(session, request, transition.effects, message)
        return f"fresh tokens sent for {row.id}"

    def _steer_by_mail(
        self, session: Session, message: ReceivedMail, command: commands.Command
    ) -> str:
        """CANCEL or RESEND by mail: at once when the sender is authenticated; otherwise
        only once the sender's address confirms it (a forged From cannot)."""
        row = self._party_request(session, message, command)
        action = command.verb.lower()
        actor = self._actor(session, message)
        if message.authenticated:
            how = f"by email, sender authenticated ({message.authentication.reason})"
            return self._steer(session, row, action, actor, message, how)
        self._check_steer(session, row, action, actor)
        return self._ask_confirmation(session, row, action, message)

    def _steer(
        self,
        session: Session,
        row: RequestRow,
        action: str,
        actor: tuple[Party, bool],
        message: ReceivedMail | None,
        how: str,
    ) -> str:
        if action == "cancel":
            return self._cancel(session, row, actor, message, how)
        return self._resend(session, row, actor, message, how)

    def _check_steer(
        self, session: Session, row: RequestRow, action: str, actor: tuple[Party, bool]
    ) -> None:
        """Raise now what the action would raise, rather than ask to confirm the impossible."""
        by, operator = actor
        request = queries.request(session, row)
        if action == "cancel":
            workflow.cancel(request, by=by, by_operator=operator, now=self.clock.now())
        else:
            workflow.resend(request, by=by, by_operator=operator)

    def _ask_confirmation(
        self, session: Session, row: RequestRow, action: str, message: ReceivedMail
    ) -> str:
        """Mail the sender's address a single-use token that carries the action out."""
        now = self.clock.now()
        if queries.live_confirmation(session, row.id, action, message.sender, now):
            return f"{action} of {row.id} already awaits confirmation by {message.sender}"
        token, key = tokens.new_token(), tokens.new_key(tokens.TOKEN_LENGTH)
        session.add(
            ConfirmationRow(
                digest=tokens.digest(token),
                reply_key_digest=tokens.digest(key),
                request_id=row.id,
                action=action,
                email=message.sender,
                inbound_id=message.id,
                created_at=now,
                expires_at=now + CONFIRMATION_TTL,
            )
        )
        level = message.authentication.level
        self._log(
            session,
            row.id,
            "confirmation-requested",
            actor=message.sender,
            inbound_id=message.id,
            detail=f"{action}; sender authentication: {level}",
        )
        bot = self.settings.bot
        reply_address = f"{bot.local_part}+{key.lower()}@{bot.domain}"
        party, _ = self._actor(session, message)
        context = {
            "action": action,
            "token": tokens.group(token),
            "reply_address": reply_address,
            "expires_at": now + CONFIRMATION_TTL,
        }
        mail = OutgoingMail(
            "confirmation-requested",
            party,
            queries.request(session, row),
            context=context,
            reply_to=reply_address,
            carries_secret=True,
        )
        self.mailer.queue(session, mail, message)
        return f"{action} of {row.id} awaits confirmation by {message.sender} ({level})"

    def _confirm_by_mail(
        self, session: Session, message: ReceivedMail, command: commands.Command
    ) -> str:
        """A confirmation token (typed, or the key of the reply address) carries out
        the CANCEL or RESEND it was sent for, once."""
        confirmation = self._confirmation_for(session, message, command.argument)
        now = self.clock.now()
        if confirmation.used_at is not None:
            raise TokenUsed("this confirmation was already used", request=confirmation.request_id)
        if confirmation.expires_at <= now:
            raise BadToken("this confirmation expired: send the command again")
        confirmation.used_at = now
        row = queries.request_row(session, confirmation.request_id, for_update=True)
        assert row is not None
        contact = queries.contact_by_email(session, confirmation.email)
        by = queries.party(contact) if contact else Party(email=confirmation.email)
        actor = (by, self.settings.is_operator(confirmation.email))
        if not self._may_follow(session, row, actor):
            raise NotAuthorized("no such request among yours", request=row.id)
        how = f"by email, confirmed by {confirmation.email}"
        done = self._steer(session, row, confirmation.action, actor, message, how)
        return f"{done} (confirmed)"

    def _confirmation_for(
        self, session: Session, message: ReceivedMail, argument: str
    ) -> ConfirmationRow:
        """By a typed token, whoever sends it; else by the reply address's key, from the
        address it was sent to (never for a sender whose DMARC fails)."""
        typed = [*mailparse.find_tokens(argument), *message.tokens]
        if typed:
            self._check_token_attempts(session, message.sender)
            for token in dict.fromkeys(typed):
                if found := queries.confirmation_by_digest(session, tokens.digest(token)):
                    return found
            raise BadToken("no confirmation has this token")
        found = None if message.forged else self.confirmation_addressed(session, message)
        if found is None:
            raise BadToken("write CONFIRM and the token of the confirmation email")
        if found.email != message.sender:
            raise NotAuthorized(
                "reply from the address the confirmation was sent to, or type its token",
                request=found.request_id,
            )
        return found

    def confirmation_addressed(
        self, session: Session, message: ReceivedMail
    ) -> ConfirmationRow | None:
        """The confirmation whose reply address the message was sent to, if any."""
        for recipient in message.recipients:
            key = mailparse.plus_key(recipient, self.settings.bot.local_part)
            canonical = tokens.normalise(key) if key else None
            if canonical is None:
                continue
            if found := queries.confirmation_by_reply_key(session, tokens.digest(canonical)):
                return found
        return None

    def _check_token_attempts(self, session: Session, actor: str) -> None:
        if not self.limits.bad_tokens.allows(session, actor, self.clock.now()):
            raise TooManyAttempts("")

    def cancel_request(self, request_id: str) -> Request:
        """An operator withdraws a request (``mailbot requests cancel``)."""
        with transaction(self.engine) as session:
            row = self._request_for_operator(session, request_id)
            self._cancel(session, row, (Party(email=OPERATOR_ACTOR), True), None)
            return queries.request(session, row)

    def resend_request(self, request_id: str) -> Request:
        """An operator re-issues tokens (``mailbot requests resend``)."""
        with transaction(self.engine) as session:
            row = self._request_for_operator(session, request_id)
            self._resend(session, row, (Party(email=OPERATOR_ACTOR), True), None)
            return queries.request(session, row)

    def _request_for_operator(self, session: Session, request_id: str) -> RequestRow:
        row = queries.request_row(session, request_id, for_update=True)
        if row is None:
            raise UnknownRequest(f"no request {request_id}")
        return row

    def sweep(self, now: datetime | None = None) -> SweepReport:
        """Apply due held decisions, expire, then remind: the scheduler's periodic job.

        Held decisions go first, so that one made before the expiry counts.

        It reads only due rows, through indexes on their due times, and is safe
        beside another sweep: each request is handled under its row lock, and
        one whose lock is taken is left to the sweep that holds it.
        """
        now = now or self.clock.now()
        applied = sum(  # before expiry: a decision held in time counts
            self._apply_held(request_id, now) for request_id in self._due(queries.due_held, now)
        )
        expired = sum(
            self._expire(request_id, now) for request_id in self._due(queries.due_expiries, now)
        )
        reminded = sum(
            self._remind(request_id, now) for request_id in self._due(queries.due_reminders, now)
        )
        self.limits.forget(now)
        return SweepReport(expired=expired, reminded=reminded, applied=applied)

    def _due(self, query: Any, now: datetime) -> list[str]:
        with transaction(self.engine) as session:
            return list(query(session, now))

    def _expire(self, request_id: str, now: datetime) -> int:
        with transaction(self.engine) as session:
            row = queries.request_row(session, request_id, for_update=True, skip_locked=True)
            if row is None:
                return 0
            transition = workflow.expire(queries.request(session, row), now)
            if not transition.effects:
                return 0
            self._save_state(session, row, transition.request)
            self._log(session, row.id, "request-expired", actor=None)
            self._carry_out(session, transition.request, transition.effects, None)
            return 1

    def _remind(self, request_id: str, now: datetime) -> int:
        with transaction(self.engine) as session:
            row = queries.request_row(session, request_id, for_update=True, skip_locked=True)
            if row is None:
                return 0
            transition = workflow.remind(
                queries.request(session, row), now, self.settings.policy.reminder_days
            )
            self._save_state(session, row, transition.request)
            for effect in transition.effects:
                assert isinstance(effect, workflow.Remind)
                self._log(
                    session,
                    row.id,
                    "reminder-sent",
                    actor=None,
                    contact_id=effect.contact.id,
                    detail=f"reminder {effect.number}",
                )
            self._carry_out(session, transition.request, transition.effects, None)
            return len(transition.effects)

    def _apply_held(self, request_id: str, now: datetime) -> int:
        """Apply the held decisions of one request whose window has passed (the sweep)."""
        with transaction(self.engine) as session:
            row = queries.request_row(session, request_id, for_update=True, skip_locked=True)
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
                self._record_decision(
                    session,
                    row,
                    contact,
                    transition,
                    Channel.WEB,
                    contact.email,
                    detail="held on the link page",
                )
                applied += 1
            return applied
