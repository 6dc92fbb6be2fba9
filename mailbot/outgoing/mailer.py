"""Mail as the service queues it: checked (whom mailbot may write to), added to
the outbox in the caller's transaction as an intent, and rendered from templates
and composed into RFC 5322 bytes when a sender claims it (``render_queued``).

Whoever wants to know when queued mail is committed (``serve`` flushes the
outbox then) registers in ``on_mail_queued``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Protocol

import sqlalchemy as sa
from sqlmodel import Session

from mailbot.clock import Clock
from mailbot.config import Settings
from mailbot.domain import OutboxStatus, Party, Request
from mailbot.mailparse import ParsedMail
from mailbot.outgoing import intents
from mailbot.outgoing.compose import Envelope, bounce_address, compose, new_message_id
from mailbot.outgoing.intents import Intent
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


MAIL_QUEUED = "mailbot.mail_queued"
"""In a session's ``info``: its transaction queued mail."""


class Mailer:
    def __init__(self, settings: Settings, clock: Clock) -> None:
        self.settings = settings
        self.clock = clock
        self.renderer = Renderer(make_environment(settings.bot.templates_dir))
        self.on_mail_queued: list[Callable[[], None]] = []
        self.answers = limits.answers(settings.policy)

    def queue(self, session: Session, mail: OutgoingMail, message: Answered | None) -> bool:
        """Add ``mail`` to the outbox, in the caller's transaction (rendered later).

        Returns False when the mail is held back instead: mailbot writes to an
        address it has no reason to trust (see ``trusts``) at most
        ``max_unsolicited_per_day`` times a day, and answers it (error, help,
        status, list) at most once a day, with a generic text that quotes
        nothing of what it was sent.
        """
        # A party with a handle is an imported contact, read in this transaction.
        trusted = mail.to.handle is not None or self.trusts(session, mail.to.email)
        if not trusted and (held := self.held_back(session, mail)):
            if mail.event not in ANSWER_EVENTS:
                session.add(EventRow(**self.held_event(mail, held)))
            return False
        self.notify_on_commit(session)
        session.add(OutboxRow(**self.outbox_values(mail, message if trusted else None, trusted)))
        if mail.event in ANSWER_EVENTS:
            self.answers.record(session, mail.to.email, self.clock.now())
        return True

    def notify_on_commit(self, session: Session) -> None:
        """Have ``on_mail_queued`` called once ``session`` commits its transaction."""
        if not self.on_mail_queued:
            return
        session.info[MAIL_QUEUED] = True
        if not sa.event.contains(session, "after_commit", self._queued):
            sa.event.listen(session, "after_commit", self._queued)

    def outbox_values(
        self,
        mail: OutgoingMail,
        message: Answered | None,
        trusted: bool,
        request_json: str | None = None,
    ) -> dict[str, Any]:
        """The outbox row of a mail that may go out: its intent, rendered later
        (see ``intents``), or its bytes when its values cannot be an intent.

        An untrusted recipient gets the generic text and no threading: a
        Message-ID is the sender's text too. ``request_json`` is the request's
        intent form when the caller has it already.
        """
        if not trusted:
            mail = replace(mail, context={**(mail.context or {}), **STRANGER_CONTEXT})
            message = None
        bot = self.settings.bot
        now = self.clock.now()
        message_id = new_message_id(bot.domain)
        answering = message is not None and message.sender == mail.to.email
        intent = Intent(
            to=mail.to,
            request=mail.request,
            context=mail.context or {},
            reply_to=mail.reply_to,
            error_code=mail.error_code,
            in_reply_to=message.message_id if answering and message else None,
            references=message.parsed.references if answering and message else (),
        )
        values: dict[str, Any] = {
            "message_id": message_id,
            "event": mail.event,
            "request_id": mail.request.id if mail.request else None,
            "validation_id": mail.validation_id,
            "to_email": mail.to.email,
            "envelope_from": bounce_address(bot.local_part, bot.domain, message_id),
            "subject": "",
            "payload": None,
            "intent": None,
            "carries_secret": mail.carries_secret,
            "status": OutboxStatus.QUEUED,
            "attempts": 0,
            "next_attempt_at": now,
            "created_at": now,
        }
        try:
            values["intent"] = intents.dumps(intent, request_json)
        except intents.NotEncodable:
            values["subject"], values["payload"] = self._render(intent, mail.event, message_id, now)
        return values

    def render_queued(self, row: OutboxRow) -> tuple[str, bytes]:
        """The subject and bytes of a mail queued as an intent, as they would have
        been made when it was queued: same Message-ID, same Date."""
        assert row.intent is not None
        intent = intents.loads(row.intent)
        return self._render(intent, row.event, row.message_id, row.created_at)

    def _render(
        self, intent: Intent, event: str, message_id: str, date: datetime
    ) -> tuple[str, bytes]:
        bot = self.settings.bot
        context: dict[str, Any] = {
            **MAIL_CONTEXT,
            "bot": bot,
            "to": intent.to,
            "event": event,
            "request": RequestView.of(intent.request) if intent.request else None,
            **intent.context,
        }
        rendered = self.renderer.mail(event, intent.to.language, context)
        envelope = Envelope(
            sender_name=bot.name,
            sender=bot.address,
            to_name=intent.to.name,
            to=intent.to.email,
            event=event,
            language=intent.to.language,
            date=date,
            message_id=message_id,
            request_id=intent.request.id if intent.request else None,
            error_code=intent.error_code,
            reply_to=intent.reply_to,
            in_reply_to=intent.in_reply_to,
            references=intent.references,
        )
        return rendered.subject, compose(envelope, rendered)

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

    def held_event(self, mail: OutgoingMail, why: str) -> dict[str, Any]:
        """The event log's line for a mail held back (stored columns)."""
        return {
            "at": self.clock.now(),
            "request_id": mail.request.id if mail.request else None,
            "kind": "mail-held",
            "actor_email": mail.to.email,
            "contact_id": mail.to.id,
            "channel": None,
            "inbound_id": None,
            "detail": f"{mail.event} not sent: {why}",
        }

    def held_back(self, session: Session, mail: OutgoingMail) -> str | None:
        """Why a mail to an untrusted address must not go out today, or None."""
        since = self.clock.now() - timedelta(days=1)
        sent = mail_queries.mails_to_mailbox_since(session, mail.to.email, since)
        if held := self.over_cap(sent):
            return held
        if (
            mail.event in ANSWER_EVENTS
            and mail_queries.mails_to_mailbox_since(session, mail.to.email, since, ANSWER_EVENTS)
            >= 1
        ):
            return "one answer a day to an unknown address"
        return None

    def over_cap(self, sent_today: int) -> str | None:
        """Why a mailbox that never answered gets no more mail today, or None."""
        cap = self.settings.policy.max_unsolicited_per_day
        if sent_today >= cap:
            return f"{cap} mails a day to an address that never answered"
        return None

    def _queued(self, session: Session) -> None:
        """SQLAlchemy says ``after_commit`` for a savepoint released too (each
        command runs in one), when the mail is not yet visible to a sender: a
        sender woken then would find nothing and leave the mail for its next
        round, seconds later. So only the outermost commit calls the listeners."""
        if session.in_nested_transaction() or not session.info.pop(MAIL_QUEUED, False):
            return
        for listener in self.on_mail_queued:
            listener()

    def answers_exhausted(self, session: Session, address: str) -> bool:
        """Whether ``address`` had its share of error and help answers this hour."""
        return not self.answers.allows(session, address, self.clock.now())
