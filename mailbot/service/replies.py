"""Answering a received mail: the answer to a question (help, status, list) and
the error mail for a command that failed, both within the answer rate limit.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlmodel import Session

from mailbot import commands
from mailbot.domain import Party, Request
from mailbot.errors import MailbotError, NotInGoodStanding
from mailbot.mailparse import redact
from mailbot.outgoing.mailer import OutgoingMail
from mailbot.service.context import ServiceContext
from mailbot.service.inbound import ReceivedMail
from mailbot.service.transitions import Event, Transitions
from mailbot.storage import mail_queries, queries

STANDING_EVENT = "good-standing-required"
"""The mail that tells a contact their account blocked a request they were named in."""


class Replies:
    """Who wrote a mail, and the mail that answers them."""

    def __init__(self, context: ServiceContext, transitions: Transitions) -> None:
        self.context = context
        self.transitions = transitions

    def actor(
        self, session: Session, mail: ReceivedMail, command: commands.Command | None = None
    ) -> tuple[Party, bool]:
        """The sender as a party, and whether they are an operator. A sender who
        is not a contact is written to in the language of their command."""
        contact = queries.contact_by_email(session, mail.sender)
        party = (
            queries.party(contact)
            if contact
            else Party(email=mail.sender, language=self.language_of(command))
        )
        return party, self.context.settings.is_operator(mail.sender)

    def language_of(self, command: commands.Command | None) -> str:
        """The language to write in to someone whose own language is unknown:
        their command's, else the bot's default."""
        if command is not None and command.french:
            return "fr"
        return self.context.settings.bot.language

    def answer(
        self,
        session: Session,
        mail: ReceivedMail,
        event: str,
        context: dict[str, Any],
        request: Request | None = None,
    ) -> str:
        """Answer a question (help, status, list) by mail, within the answer rate limit."""
        mailer = self.context.mailer
        if mailer.answers_exhausted(session, mail.sender):
            return f"{event} not sent: rate limit"
        party, _ = self.actor(session, mail)
        answer = OutgoingMail(event, party, request, context=context)
        if not mailer.queue(session, answer, mail):
            return f"{event} not sent: held back (answers to unknown addresses)"
        return f"{event} sent to {mail.sender}"

    def reject(
        self,
        session: Session,
        mail: ReceivedMail,
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
        request_id = self._existing_request(session, error.context.get("request"))
        event = Event(f"error:{error.code}", actor=mail.sender, detail=error.detail)
        self.transitions.log(session, request_id, event, mail.id)
        if self.context.mailer.answers_exhausted(session, mail.sender):
            return False
        local = self.context.settings.bot.local_part
        shown = MailbotError(
            redact.text(error.detail, local),
            **{k: redact.text(v, local) for k, v in error.context.items()},
        )
        shown.code = error.code
        context = {
            "error": shown,
            "command": redact.text(command.line, local) if command else "",
            "original_subject": redact.text(mail.subject[:200], local),
        }
        to = self._addressee(session, mail, command)
        error_mail = OutgoingMail("error", to, context=context, error_code=error.code)
        if not self.context.mailer.queue(session, error_mail, mail):
            return False
        if isinstance(error, NotInGoodStanding) and error.context.get("reader") == "other":
            self._tell_not_in_good_standing(session, error, to)
        return True

    def _tell_not_in_good_standing(
        self, session: Session, error: NotInGoodStanding, requester: Party
    ) -> None:
        """Tell the contact whose account blocked a request why, privately.

        Only a known contact (the one the refusal names), only when the
        requester was answered (their own answer limit holds both), and at
        most ``max_unsolicited_per_day`` such mails a day: naming someone in
        requests is no way to flood their mailbox.
        """
        contact = queries.contact_by_email(session, error.context.get("contact", ""))
        if contact is None:
            return
        since = self.context.clock.now() - timedelta(days=1)
        sent = mail_queries.mails_to_mailbox_since(session, contact.email, since, (STANDING_EVENT,))
        if sent >= self.context.settings.policy.max_unsolicited_per_day:
            return
        context = {
            "service": error.context.get("service", ""),
            "standing": error.context.get("standing", ""),
            "roles": error.context.get("roles", ""),
            "requester": requester,
        }
        notice = OutgoingMail(STANDING_EVENT, queries.party(contact), context=context)
        self.context.mailer.queue(session, notice, None)

    def _addressee(
        self, session: Session, mail: ReceivedMail, command: commands.Command | None
    ) -> Party:
        """The sender, in their language: a contact's own, else the command's."""
        contact = queries.contact_by_email(session, mail.sender)
        language = contact.language if contact is not None else self.language_of(command)
        return Party(
            id=contact.id if contact else None,
            email=mail.sender,
            name=contact.name if contact else "",
            language=language,
        )

    def _existing_request(self, session: Session, request_id: str | None) -> str | None:
        """An error's request id for the event log, when it names a stored request."""
        if request_id is None or queries.request_row(session, request_id) is None:
            return None
        return request_id
