"""Mail as the service queues it: rendered from templates, composed into RFC 5322
bytes and added to the outbox in the caller's transaction.

Whoever wants to know when queued mail is committed (``serve`` flushes the
outbox then) registers in ``on_mail_queued``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session

from mailbot import store
from mailbot.clock import Clock
from mailbot.compose import Envelope, bounce_address, compose, new_message_id
from mailbot.config import Settings
from mailbot.domain import Party, Request
from mailbot.inbound import Inbound
from mailbot.models import OutboxRow
from mailbot.render import MAIL_CONTEXT, Renderer, make_environment
from mailbot.views import RequestView

ANSWER_EVENTS = ("error", "help", "status", "list")
"""Mails that answer a person's mistake or question: rate-limited per address."""


@dataclass
class Outgoing:
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

    def queue(self, session: Session, mail: Outgoing, message: Inbound | None) -> None:
        """Render ``mail`` and add it to the outbox, in the caller's transaction."""
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

    def _queued(self, session: Session) -> None:
        for listener in self.on_mail_queued:
            listener()

    def answers_exhausted(self, session: Session, address: str) -> bool:
        """Whether ``address`` had its share of error and help answers this hour."""
        since = self.clock.now() - timedelta(hours=1)
        sent = store.recent_answers(session, address, ANSWER_EVENTS, since)
        return sent >= self.settings.policy.max_answers_per_hour
