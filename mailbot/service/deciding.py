"""Deciding: ACCEPT and REFUSE by mail or on the link page, and finding the
validation a mail or a token speaks for.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

from sqlmodel import Session

from mailbot import commands, mailparse, tokens, workflow
from mailbot.domain import Channel, Decision, Request, Validation, ValidationStatus
from mailbot.errors import (
    AmbiguousDecision,
    BadToken,
    NotAuthorized,
    TooManyAttempts,
)
from mailbot.service.core import ServiceCore
from mailbot.service.inbound import ReceivedMail
from mailbot.storage import queries
from mailbot.storage.engine import transaction
from mailbot.storage.tables import (
    ContactRow,
    RequestRow,
    ValidationRow,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TokenPage:
    """A token's request and the validation it stands for."""

    request: Request
    validation: Validation

    @property
    def usable(self) -> bool:
        return self.request.pending and self.validation.pending

    @property
    def held(self) -> bool:
        """A decision from the link page waits for its undo window to pass."""
        return self.usable and self.validation.held is not None


class DecidingCases(ServiceCore):
    def _decide_by_mail(
        self, session: Session, message: ReceivedMail, command: commands.Command
    ) -> str:
        decision = commands.decision_of(command)
        validation = self._validation_for(session, message, command.argument)
        request = self._decide(
            session, validation, decision, Channel.EMAIL, actor=message.sender, message=message
        )
        return f"{decision.value} recorded on {request.id}; request is {request.status.value}"

    def _validation_for(
        self, session: Session, message: ReceivedMail, argument: str
    ) -> ValidationRow:
        """The validation a mail speaks for: by typed token, reply address, thread,
        or, failing those, the token of our own mail quoted below the answer.

        A token is a credential on its own, typed or quoted. A reply without one
        is matched by the address or thread of our mail, and must come from the
        contact. Tokens of two different validations in one mail are ambiguous.
        """
        typed = [argument] if tokens.looks_like_token_attempt(argument) else []
        if typed or message.tokens:
            return self._validation_by_tokens(session, [*typed, *message.tokens], message.sender)
        if message.forged:  # only a token is believed from a sender DMARC refutes
            if message.quoted_tokens:
                return self._validation_by_tokens(
                    session, list(message.quoted_tokens), message.sender
                )
            raise BadToken("write the token: a reply without one is not enough here")
        row = self._validation_by_reply(session, message)
        if row is None and message.quoted_tokens:
            return self._validation_by_tokens(session, list(message.quoted_tokens), message.sender)
        if row is None:
            raise BadToken("no token and not a reply to a validation email")
        contact = session.get(ContactRow, row.contact_id)
        assert contact is not None
        if contact.email != message.sender:
            raise NotAuthorized(
                "reply from the address the validation email was sent to, or include the token",
                request=row.request_id,
            )
        return row

    def _validation_by_tokens(
        self, session: Session, typed: list[str], actor: str
    ) -> ValidationRow:
        if not self.limits.bad_tokens.allows(session, actor, self.clock.now()):
            raise TooManyAttempts("")
        found: dict[int | None, ValidationRow] = {}
        last_error = BadToken("")
        for candidate in typed:  # what looks like a token may be words that do not match
            try:
                row = self._validation_by_token_only(session, candidate)
            except BadToken as error:
                last_error = error
                continue
            found[row.id] = row
        if not found:
            raise last_error
        if len(found) > 1:
            raise AmbiguousDecision("tokens of several validations in one mail")
        return next(iter(found.values()))

    def _validation_by_reply(self, session: Session, message: ReceivedMail) -> ValidationRow | None:
        for recipient in message.recipients:
            key = mailparse.plus_key(recipient, self.settings.bot.local_part)
            normalised = tokens.normalise_key(key) if key else None
            if (
                normalised
                and (found := queries.token_by_reply_key(session, tokens.digest(normalised)))
                and found.used_at is None
            ):
                return session.get(ValidationRow, found.validation_id)
        sent = queries.sent_mail(session, message.references)
        if sent is None:
            return None
        if sent.validation_id is not None:
            return session.get(ValidationRow, sent.validation_id)
        contact = queries.contact_by_email(session, message.sender)
        if sent.request_id is None or contact is None:
            return None
        rows = queries.validation_rows(session, sent.request_id)
        return next((v for v in rows if v.contact_id == contact.id), None)

    def _decide(
        self,
        session: Session,
        validation: ValidationRow,
        decision: Decision,
        channel: Channel,
        *,
        actor: str,
        message: ReceivedMail | None = None,
    ) -> Request:
        request_row = queries.request_row(session, validation.request_id, for_update=True)
        assert request_row is not None
        session.refresh(validation)
        contact = session.get(ContactRow, validation.contact_id)
        assert contact is not None
        now = self.clock.now()
        transition = workflow.decide(
            queries.request(session, request_row),
            contact=queries.party(contact),
            decision=decision,
            channel=channel,
            now=now,
            actor=actor,
        )
        detail = f"forwarded by {message.via}" if message and message.via else ""
        return self._record_decision(
            session, request_row, contact, transition, channel, actor, message, detail
        )

    def token_page(self, typed: str) -> TokenPage:
        """What a token's link shows; reads only (mail scanners open every link)."""
        with transaction(self.engine) as session:
            return self._page_of(session, self._validation_by_token_only(session, typed))

    def _page_of(self, session: Session, validation: ValidationRow) -> TokenPage:
        contact = session.get(ContactRow, validation.contact_id)
        request_row = queries.request_row(session, validation.request_id)
        assert contact is not None
        assert request_row is not None
        request = queries.request(session, request_row)
        own = request.validation_of(queries.party(contact))
        assert own is not None
        return TokenPage(request, own)

    def _validation_by_token_only(self, session: Session, typed: str) -> ValidationRow:
        token = tokens.normalise(typed)
        found = queries.token_by_digest(session, tokens.digest(token)) if token else None
        if found is None:
            raise BadToken("")
        validation = session.get(ValidationRow, found.validation_id)
        assert validation is not None
        if found.used_at is not None and validation.status == ValidationStatus.PENDING:
            raise BadToken("this token was replaced by a newer one: use the latest email")
        return validation

    def decide_with_token(
        self, typed: str, decision: Decision, channel: Channel, *, actor: str | None = None
    ) -> Request:
        """A decision carried by a token alone (the link page)."""
        with transaction(self.engine) as session:
            validation = self._validation_by_token_only(session, typed)
            contact = session.get(ContactRow, validation.contact_id)
            assert contact is not None
            return self._decide(
                session, validation, decision, channel, actor=actor or contact.email
            )

    def hold_with_token(self, typed: str, decision: Decision) -> TokenPage:
        """A decision from the link page, held for ``[web] undo_minutes`` before it counts.

        The contact is mailed what was recorded, when it takes effect and an
        undo link; the sweep applies it once the window has passed.
        """
        with transaction(self.engine) as session:
            validation = self._validation_by_token_only(session, typed)
            request_row, contact = self._locked(session, validation)
            party = queries.party(contact)
            transition = workflow.hold(
                queries.request(session, request_row),
                contact=party,
                decision=decision,
                now=self.clock.now(),
                window=timedelta(minutes=self.settings.web.undo_minutes),
            )
            self._save_state(session, request_row, transition.request)
            self._log(
                session,
                request_row.id,
                "decision-held",
                actor=contact.email,
                contact_id=contact.id,
                channel=Channel.WEB.value,
                detail=decision.value,
            )
            self._carry_out(session, transition.request, transition.effects, None)
            own = transition.request.validation_of(party)
            assert own is not None
            return TokenPage(transition.request, own)

    def _locked(self, session: Session, validation: ValidationRow) -> tuple[RequestRow, ContactRow]:
        """The validation's request, locked, and its contact; the validation re-read
        under the lock, since another answer may have just changed it."""
        request_row = queries.request_row(session, validation.request_id, for_update=True)
        assert request_row is not None
        session.refresh(validation)
        contact = session.get(ContactRow, validation.contact_id)
        assert contact is not None
        return request_row, contact

    def undo_page(self, typed: str) -> TokenPage:
        """What an undo link shows; reads only, like the link page."""
        with transaction(self.engine) as session:
            return self._page_of(session, self._validation_by_undo(session, typed))

    def undo_with_token(self, typed: str) -> TokenPage:
        """Withdraw a held decision: the contact is awaited again and may answer anew."""
        with transaction(self.engine) as session:
            validation = self._validation_by_undo(session, typed)
            request_row, contact = self._locked(session, validation)
            party = queries.party(contact)
            transition = workflow.undo(queries.request(session, request_row), contact=party)
            self._save_state(session, request_row, transition.request)
            self._log(
                session,
                request_row.id,
                "decision-undone",
                actor=contact.email,
                contact_id=contact.id,
                channel=Channel.WEB.value,
            )
            own = transition.request.validation_of(party)
            assert own is not None
            return TokenPage(transition.request, own)

    def _validation_by_undo(self, session: Session, typed: str) -> ValidationRow:
        token = tokens.normalise(typed)
        found = queries.validation_by_undo(session, tokens.digest(token)) if token else None
        if found is None:
            raise BadToken("")
        return found
