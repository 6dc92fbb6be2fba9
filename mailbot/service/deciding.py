"""Deciding: ACCEPT and REFUSE by mail or on the link page, and finding the
validation a mail or a token speaks for.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from sqlmodel import Session

from mailbot import commands, mailparse, tokens, workflow
from mailbot.domain import Channel, Decision, Party, Request, Validation, ValidationStatus
from mailbot.errors import AmbiguousDecision, BadToken, NotAuthorized
from mailbot.service.context import ServiceContext
from mailbot.service.inbound import ReceivedMail
from mailbot.service.transitions import Event, Transitions
from mailbot.storage import queries
from mailbot.storage.engine import transaction
from mailbot.storage.tables import (
    ContactRow,
    RequestRow,
    ValidationRow,
)


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


class Deciding:
    """ACCEPT and REFUSE, by mail or on the link page, and the link page's held
    decisions and their undo."""

    def __init__(self, context: ServiceContext, transitions: Transitions) -> None:
        self.context = context
        self.settings = context.settings
        self.clock = context.clock
        self.engine = context.engine
        self.transitions = transitions

    def by_mail(
        self, session: Session, message: ReceivedMail, command: commands.Command, decision: Decision
    ) -> str:
        """Record the decision of a mail on the validation it speaks for."""
        validation = self._validation_for(session, message, command.argument)
        request = self.decide(
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
            raise BadToken(
                "write the token: a reply without one is not enough here", reason="token-needed"
            )
        row = self._validation_by_reply(session, message)
        if row is None and message.quoted_tokens:
            return self._validation_by_tokens(session, list(message.quoted_tokens), message.sender)
        if row is None:
            raise BadToken("no token and not a reply to a validation email", reason="no-token")
        contact = session.get(ContactRow, row.contact_id)
        assert contact is not None
        if contact.email != message.sender:
            raise NotAuthorized(
                "reply from the address the validation email was sent to, or include the token",
                request=row.request_id,
                reason="validation-address",
            )
        return row

    def _validation_by_tokens(
        self, session: Session, typed: list[str], actor: str
    ) -> ValidationRow:
        """The one validation the typed tokens name (words that merely look like
        a token are skipped); refused to an address that guessed too often."""
        self.context.check_token_attempts(session, actor)
        found: dict[int | None, ValidationRow] = {}
        last_error = BadToken("")
        # The token typed after the command is usually also among those in the
        # text: one lookup for each distinct token, not for each mention.
        distinct = dict.fromkeys(tokens.normalise(word) or word for word in typed)
        for candidate in distinct:  # what looks like a token may be words that do not match
            try:
                row = self._validation_by_token_only(session, candidate)
            except BadToken as error:
                last_error = error
                continue
            found[row.id] = row
        if not found:
            raise last_error
        if len(found) > 1:
            raise AmbiguousDecision(
                "tokens of several validations in one mail", reason="several-tokens"
            )
        return next(iter(found.values()))

    def _validation_by_reply(self, session: Session, message: ReceivedMail) -> ValidationRow | None:
        """By the reply address's key, else by the thread of our mail it answers."""
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

    def decide(
        self,
        session: Session,
        validation: ValidationRow,
        decision: Decision,
        channel: Channel,
        *,
        actor: str | None = None,
        message: ReceivedMail | None = None,
    ) -> Request:
        """Record a decision on ``validation``, under the lock of its request;
        ``actor`` is the contact unless said otherwise."""
        request_row, request, contact = self._locked(session, validation)
        actor = actor or contact.email
        transition = workflow.decide(
            request,
            contact=contact,
            decision=decision,
            channel=channel,
            now=self.clock.now(),
            actor=actor,
        )
        detail = f"forwarded by {message.via}" if message and message.via else ""
        events = decision_events(transition, contact, channel, actor, detail)
        return self.transitions.commit(session, request_row, transition, events, message)

    def token_page(self, typed: str) -> TokenPage:
        """What a token's link shows; reads only (mail scanners open every link)."""
        with transaction(self.engine) as session:
            return self._page_of(session, self._validation_by_token_only(session, typed))

    def _page_of(self, session: Session, validation: ValidationRow) -> TokenPage:
        """The request and the validation's own state, as the link page shows them."""
        contact = session.get(ContactRow, validation.contact_id)
        request_row = queries.request_row(session, validation.request_id)
        assert contact is not None
        assert request_row is not None
        request = queries.request(session, request_row)
        own = request.validation_of(queries.party(contact))
        assert own is not None
        return TokenPage(request, own)

    def _validation_by_token_only(self, session: Session, typed: str) -> ValidationRow:
        """The validation a token names, whoever carries it; a replaced token is refused."""
        token = tokens.normalise(typed)
        found = queries.token_by_digest(session, tokens.digest(token)) if token else None
        if found is None:
            raise BadToken("")
        issued, validation = found
        if issued.used_at is not None and validation.status == ValidationStatus.PENDING:
            raise BadToken(
                "this token was replaced by a newer one: use the latest email",
                reason="token-replaced",
            )
        return validation

    def decide_with_token(
        self, typed: str, decision: Decision, channel: Channel, *, actor: str | None = None
    ) -> Request:
        """A decision carried by a token alone (the link page)."""
        with transaction(self.engine) as session:
            validation = self._validation_by_token_only(session, typed)
            return self.decide(session, validation, decision, channel, actor=actor)

    def hold_with_token(self, typed: str, decision: Decision) -> TokenPage:
        """A decision from the link page, held for ``[web] undo_minutes`` before it counts.

        The contact is mailed what was recorded, when it takes effect and an
        undo link; the sweep applies it once the window has passed.
        """
        with transaction(self.engine) as session:
            validation = self._validation_by_token_only(session, typed)
            request_row, request, party = self._locked(session, validation)
            transition = workflow.hold(
                request,
                contact=party,
                decision=decision,
                now=self.clock.now(),
                window=timedelta(minutes=self.settings.web.undo_minutes),
            )
            held = Event(
                "decision-held",
                actor=party.email,
                contact_id=party.id,
                channel=Channel.WEB,
                detail=decision.value,
            )
            self.transitions.commit(session, request_row, transition, [held])
            own = transition.request.validation_of(party)
            assert own is not None
            return TokenPage(transition.request, own)

    def _locked(
        self, session: Session, validation: ValidationRow
    ) -> tuple[RequestRow, Request, Party]:
        """The validation's request, locked and read under the lock (another
        answer may have just changed it), and the validation's contact."""
        request_row = queries.request_row(session, validation.request_id, for_update=True)
        assert request_row is not None
        request = queries.request(session, request_row)
        own = validation.contact_id
        contact = next(v.contact for v in request.validations if v.contact.id == own)
        return request_row, request, contact

    def undo_page(self, typed: str) -> TokenPage:
        """What an undo link shows; reads only, like the link page."""
        with transaction(self.engine) as session:
            return self._page_of(session, self._validation_by_undo(session, typed))

    def undo_with_token(self, typed: str) -> TokenPage:
        """Withdraw a held decision: the contact is awaited again and may answer anew."""
        with transaction(self.engine) as session:
            validation = self._validation_by_undo(session, typed)
            request_row, request, party = self._locked(session, validation)
            transition = workflow.undo(request, contact=party)
            undone = Event(
                "decision-undone", actor=party.email, contact_id=party.id, channel=Channel.WEB
            )
            self.transitions.commit(session, request_row, transition, [undone])
            own = transition.request.validation_of(party)
            assert own is not None
            return TokenPage(transition.request, own)

    def _validation_by_undo(self, session: Session, typed: str) -> ValidationRow:
        """The validation an undo link names (its single-use token, by digest)."""
        token = tokens.normalise(typed)
        found = queries.validation_by_undo(session, tokens.digest(token)) if token else None
        if found is None:
            raise BadToken("")
        return found


def decision_events(
    transition: workflow.Transition,
    contact: Party,
    channel: Channel,
    actor: str | None,
    detail: str = "",
) -> list[Event]:
    """What a decision writes in the log: the validation's new status and, when it
    closed the request, the request's."""
    request = transition.request
    decided = request.validation_of(contact)
    assert decided is not None
    events = [
        Event(
            f"validation-{decided.status.value}",
            actor=actor,
            contact_id=contact.id,
            channel=channel,
            detail=detail,
        )
    ]
    if not request.pending:
        events.append(Event(f"request-{request.status.value}", actor=actor))
    return events
