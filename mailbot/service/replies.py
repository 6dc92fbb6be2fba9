"""Answering a received mail: the answer to a question (help, status, list) and
the error mail for a command that failed, both within the answer rate limit.
"""

from __future__ import annotations

from typing import Any

from sqlmodel import Session

from mailbot import commands
from mailbot.domain import Party, Request
from mailbot.errors import MailbotError
from mailbot.mailparse import redact
from mailbot.outgoing.mailer import OutgoingMail
from mailbot.service.context import ServiceContext
from mailbot.service.inbound import ReceivedMail
from mailbot.service.transitions import Event, Transitions
from mailbot.storage import queries


class Replies:
    """Who wrote a mail, and the mail that answers them."""

    def __init__(self, context: ServiceContext, transitions: Transitions) -> None:
        self.context = context
        self.transitions = transitions

    def actor(self, session: Session, mail: ReceivedMail) -> tuple[Party, bool]:
        """The sender as a party, and whether they are an operator."""
        contact = queries.contact_by_email(session, mail.sender)
        party = queries.party(contact) if contact else Party(email=mail.sender)
        return party, self.context.settings.is_operator(mail.sender)

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
        return self.context.mailer.queue(session, error_mail, mail)

    def _addressee(
        self, session: Session, mail: ReceivedMail, command: commands.Command | None
    ) -> Party:
        """The sender, in their language: a contact's own, else the command's."""
        contact = queries.contact_by_email(session, mail.sender)
        if contact is not None:
            language = contact.language
        elif command is not None and command.french:
            language = "fr"
        else:
            language = self.context.settings.bot.language
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
