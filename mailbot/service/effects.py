"""Carrying out a transition's effects: the mails it sends, the tokens it issues
or revokes, the role holders it changes. Called by ``Transitions.commit``.
"""

from __future__ import annotations

from typing import Any

from sqlmodel import Session

from mailbot import tokens, workflow
from mailbot.domain import Party, Request
from mailbot.outgoing.mailer import OutgoingMail
from mailbot.service.context import ServiceContext
from mailbot.service.inbound import ReceivedMail
from mailbot.storage import queries
from mailbot.storage.tables import TokenRow, ValidationRow


class Effects:
    """Turns each workflow effect into rows and queued mail, in the caller's transaction."""

    def __init__(self, context: ServiceContext) -> None:
        self.context = context

    def carry_out(
        self,
        session: Session,
        request: Request,
        effects: tuple[workflow.Effect, ...],
        mail: ReceivedMail | None,
    ) -> None:
        """``mail`` is the received mail that caused them (threading, loop limits)."""
        for effect in effects:
            if isinstance(effect, workflow.ApplyHolders):
                self.apply_holders(session, effect)
            elif isinstance(effect, workflow.AskToValidate):
                if effect.replace:
                    self.revoke_tokens(session, request, effect.contact)
                self.send_token(session, request, effect.contact, mail)
            elif isinstance(effect, workflow.Remind):
                self.send_token(session, request, effect.contact, mail, effect.number)
            elif isinstance(effect, workflow.ConfirmHeld):
                self.send_undo(session, request, effect)
            else:
                for party in effect.recipients:
                    notice = OutgoingMail(effect.event, party, request, context=dict(effect.about))
                    self.context.mailer.queue(session, notice, mail)

    def apply_holders(self, session: Session, effect: workflow.ApplyHolders) -> None:
        """A validated change takes effect: the service's roles get their new holders."""
        row = queries.service_row(session, effect.service, for_update=True)
        assert row is not None
        for role, holder in effect.holders.items():
            assert holder.id is not None
            setattr(row, f"{role.value}_id", holder.id)
        row.updated_at = self.context.clock.now()

    def revoke_tokens(self, session: Session, request: Request, contact: Party) -> None:
        """Mark the contact's live tokens used, so that only the newest one works."""
        validation = validation_row(session, request, contact)
        assert validation.id is not None
        for token in queries.live_tokens(session, validation.id):
            token.used_at = self.context.clock.now()

    def send_token(
        self,
        session: Session,
        request: Request,
        contact: Party,
        mail: ReceivedMail | None,
        reminder: int | None = None,
    ) -> None:
        """A fresh token for the contact, in a validation mail or a reminder."""
        validation = validation_row(session, request, contact)
        assert validation.id is not None
        token, outgoing = self.token_mail(request, contact, validation.id, reminder)
        session.add(TokenRow(**token))
        self.context.mailer.queue(session, outgoing, mail)

    def token_mail(
        self, request: Request, contact: Party, validation_id: int, reminder: int | None = None
    ) -> tuple[dict[str, Any], OutgoingMail]:
        """A fresh token's stored columns, and the mail that carries it."""
        token, reply_key = tokens.new_token(), tokens.new_key()
        stored = {
            "validation_id": validation_id,
            "digest": tokens.digest(token),
            "reply_key_digest": tokens.digest(reply_key),
            "issued_at": self.context.clock.now(),
            "used_at": None,
        }
        reply_address = self.context.reply_address(reply_key)
        side = request.validation_of(contact)
        context = {
            "token": tokens.group(token),
            "link": f"{self.context.settings.bot.base_url}/v/{token}",
            "reply_address": reply_address,
            "side": side.side.value if side else "new",
            "reminder_number": reminder,
        }
        event = "validation-requested" if reminder is None else "reminder"
        outgoing = OutgoingMail(
            event,
            contact,
            request,
            context=context,
            validation_id=validation_id,
            reply_to=reply_address,
            carries_secret=True,
        )
        return stored, outgoing

    def send_undo(self, session: Session, request: Request, effect: workflow.ConfirmHeld) -> None:
        """Tell the contact what the link page recorded, with a fresh single-use undo link."""
        validation = validation_row(session, request, effect.contact)
        undo_token = tokens.new_token()
        validation.undo_digest = tokens.digest(undo_token)
        settings = self.context.settings
        context = {
            "decision": effect.decision.value,
            "until": effect.until,
            "minutes": settings.web.undo_minutes,
            "undo_link": f"{settings.bot.base_url}/u/{undo_token}",
        }
        outgoing = OutgoingMail(
            "decision-held",
            effect.contact,
            request,
            context=context,
            validation_id=validation.id,
            carries_secret=True,
        )
        self.context.mailer.queue(session, outgoing, None)


def validation_row(session: Session, request: Request, contact: Party) -> ValidationRow:
    """The stored validation of ``contact`` on ``request``."""
    return next(
        v for v in queries.validation_rows(session, request.id) if v.contact_id == contact.id
    )
