"""Mail as the service queues it: rendered from templates, composed into RFC 5322
bytes and added to the outbox in the caller's transaction.

Whoever wants to know when queued mail is committed (``serve`` flushes the
outbox then) registers in ``on_mail_queued``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any, Protocol

import sqlalchemy as sa
from sqlmodel import Session

from mailbot.clock import Clock
from mailbot.config import Settings
from mailbot.domain import Party, Request
from mailbot.mailparse import ParsedMail
from mailbot.outgoing.compose import Envelope, bounce_address, compose, new_message_id
from mailbot.outgoing.render import MAIL_CONTEXT, Renderer, make_environment
from mailbot.storage import limits, mail_queries, queries
from mailbot.storage.tables import EventRow, OutboxRow
from mailbot.views import RequestView

ANSWER_EVENTS = ("error", "help", "status", "list")
"""Mails that answer a person's mistake or question: rate-limited per address."""
STRANGER_CONTEXT: dict[str, Any] = {"generic": True, "original_subject": "", "command": ""}
"""What an answer to an untrusted address is rendered with: a generic text that
quotes nothing of its mail (backscatter carries no spam)."""


class Answered(Protocol):
    """The received mail an outgoing one answers, threaded under it when it goes
    back to that mail's sender (the service's ``ReceivedMail`` is one)."""

    @property
    def sender(self) -> str: ...

    @property
    def message_id(self) -> str | None: ...

    @property
    def parsed(self) -> ParsedMail: ...


@dataclass
class OutgoingMail:
    """One mail to queue: who, what, and how it threads."""

    event: str
    to: Party
    request: Request | None = None
    context: dict[str, Any] | None = None
    validation_id: int | None = None
    reply_to: str | None = None
    error_code: str | None = None
    carries_secret: bool = False


class Mailer:
    def __init__(self, settings: Settings, clock: Clock) -> None:
        self.settings = settings
        self.clock = clock
        self.renderer = Renderer(make_environment(settings.bot.templates_dir))
        self.on_mail_queued: list[Callable[[], None]] = []
        self.answers = limits.answers(settings.policy)

    def queue(self, session: Session, mail: OutgoingMail, message: Answered | None) -> bool:
        """Render ``mail`` and add it to the outbox, in the caller's transaction.

        Returns False when the mail is held back instead: mailbot writes to an
        address it has no reason to trust (see ``trusts``) at most
        ``max_unsolicited_per_day`` times a day, and answers it (error, help,
        status, list) at most once a day, with a generic text that quotes
        nothing of what it was sent.
        """
        trusted = self.trusts(session, mail.to.email)
        if not trusted and (held := self._held_back(session, mail)):
            if mail.event not in ANSWER_EVENTS:
                session.add(
                    EventRow(
                        at=self.clock.now(),
                        request_id=mail.request.id if mail.request else None,
                        kind="mail-held",
                        actor_email=mail.to.email,
                        contact_id=mail.to.id,
                        detail=f"{mail.event} not sent: {held}",
                    )
                )
            return False
        if not trusted:
            mail = replace(mail, context={**(mail.context or {}), **STRANGER_CONTEXT})
            message = None  # no threading either: a Message-ID is the sender's text too
        if self.on_mail_queued and not sa.event.contains(session, "after_commit", self._queued):
            sa.event.listen(session, "after_commit", self._queued, once=True)
        bot = self.settings.bot
        context: dict[str, Any] = {
            **MAIL_CONTEXT,
            "bot": bot,
            "to": mail.to,
            "event": mail.event,
            "request": RequestView.of(mail.request) if mail.request else None,
            **(mail.context or {}),
        }
        rendered = self.renderer.mail(mail.event, mail.to.language, context)
        answering = message is not None and message.sender == mail.to.email
        envelope = Envelope(
            sender_name=bot.name,
            sender=bot.address,
            to_name=mail.to.name,
            to=mail.to.email,
            event=mail.event,
            language=mail.to.language,
            date=self.clock.now(),
            message_id=new_message_id(bot.domain),
            request_id=mail.request.id if mail.request else None,
            error_code=mail.error_code,
            reply_to=mail.reply_to,
            in_reply_to=message.message_id if answering and message else None,
            references=message.parsed.references if answering and message else (),
        )
        session.add(
            OutboxRow(
                message_id=envelope.message_id,
                event=mail.event,
                request_id=envelope.request_id,
                validation_id=mail.validation_id,
                to_email=mail.to.email,
                envelope_from=bounce_address(bot.local_part, bot.domain, envelope.message_id),
                subject=rendered.subject,
                payload=compose(envelope, rendered),
                carries_secret=mail.carries_secret,
                next_attempt_at=envelope.date,
                created_at=envelope.date,
            )
        )
        if mail.event in ANSWER_EVENTS:
            self.answers.record(session, mail.to.email, envelope.date)
        return True

    def trusts(self, session: Session, address: str) -> bool:
        """Whether mailbot may write to ``address`` freely and quote what it sent.

        Trusted are the operators, contacts from the import (they have a
        handle), holders of a role on a service, and anyone who once decided a
        validation (which takes the token mailbot sent them). A contact that
        exists only because someone named its address in a request is not.
        """
        if self.settings.is_operator(address):
            return True
        contact = queries.contact_by_email(session, address)
        if contact is None:
            return False
        if contact.handle is not None:
            return True
        assert contact.id is not None
        return queries.holds_a_role(session, contact.id) or queries.has_decided(session, contact.id)

    def _held_back(self, session: Session, mail: OutgoingMail) -> str | None:
        """Why a mail to an untrusted address must not go out today, or None."""
        since = self.clock.now() - timedelta(days=1)
        cap = self.settings.policy.max_unsolicited_per_day
        if mail_queries.mails_to_mailbox_since(session, mail.to.email, since) >= cap:
            return f"{cap} mails a day to an address that never answered"
        if (
            mail.event in ANSWER_EVENTS
            and mail_queries.mails_to_mailbox_since(session, mail.to.email, since, ANSWER_EVENTS)
            >= 1
        ):
            return "one answer a day to an unknown address"
        return None

    def _queued(self, session: Session) -> None:
        for listener in self.on_mail_queued:
            listener()

    def answers_exhausted(self, session: Session, address: str) -> bool:
        """Whether ``address`` had its share of error and help answers this hour."""
        return not self.answers.allows(session, address, self.clock.now())
