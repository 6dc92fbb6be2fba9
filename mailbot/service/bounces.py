"""Bounces of our own mail: a permanent failure of a token mail marks its
validation's delivery failed and tells the requester. A bounce is never answered.
"""

from __future__ import annotations

from sqlmodel import Session

from mailbot import mailparse
from mailbot.domain import Delivery
from mailbot.outgoing.compose import bounced_message_id
from mailbot.outgoing.mailer import OutgoingMail
from mailbot.service.context import ServiceContext
from mailbot.service.transitions import Event, Transitions
from mailbot.storage import queries
from mailbot.storage.tables import ContactRow, InboundRow, OutboxRow, ValidationRow


class Bounces:
    """Reads which mail of ours bounced, and records what it means."""

    def __init__(self, context: ServiceContext, transitions: Transitions) -> None:
        self.context = context
        self.transitions = transitions

    def record(
        self,
        session: Session,
        row: InboundRow,
        parsed: mailparse.ParsedMail,
        bounce: mailparse.Bounce,
    ) -> str:
        """Note the bounce ``row`` holds; returns the outcome for the stored message."""
        if not bounce.permanent:
            return "bounce ignored: delivery delayed, not failed"
        sent = self._bounced_mail(session, row, parsed, bounce)
        if sent is None:
            return "bounce ignored: not for a mail of ours"
        validation = session.get(ValidationRow, sent.validation_id) if sent.validation_id else None
        if validation is None or validation.delivery == Delivery.FAILED:
            return f"bounce of {sent.event} to {sent.to_email} noted"
        validation.delivery = Delivery.FAILED
        request_row = queries.request_row(session, validation.request_id)
        contact = session.get(ContactRow, validation.contact_id)
        assert request_row is not None
        assert contact is not None
        request = queries.request(session, request_row)
        failed = Event(
            "delivery-failed",
            actor=sent.to_email,
            contact_id=contact.id,
            detail=bounce.diagnostic[:500],
        )
        self.transitions.log(session, request.id, failed, row.id)
        if request.pending:
            context = {
                "failed_contact": queries.party(contact),
                "diagnostic": " ".join(bounce.diagnostic.split())[:300],
            }
            notice = OutgoingMail("delivery-failed", request.requester, request, context=context)
            self.context.mailer.queue(session, notice, None)
        return f"bounce: the validation mail to {sent.to_email} failed ({request.id})"

    def _bounced_mail(
        self,
        session: Session,
        row: InboundRow,
        parsed: mailparse.ParsedMail,
        bounce: mailparse.Bounce,
    ) -> OutboxRow | None:
        """Our mail that bounced: named by the VERP address it was sent with, or
        failing that by the Message-ID the bounce quotes."""
        bot = self.context.settings.bot
        addresses = (
            *filter(None, row.recipients.split(",")),
            *parsed.recipients,
            *parsed.envelope_recipients,
            bounce.original_envelope_from or "",
        )
        named = [bounced_message_id(a, bot.local_part, bot.domain) for a in addresses]
        if found := queries.sent_mail(session, tuple(filter(None, named))):
            return found
        if bounce.original_message_id:
            return queries.sent_mail(session, (bounce.original_message_id,))
        return None
