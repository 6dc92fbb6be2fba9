"""CANCEL and RESEND by mail, and the CONFIRM that carries them out when the
sender is not authenticated: the sender's address must prove itself first,
since anyone can write another's address in From.
"""

from __future__ import annotations

from datetime import timedelta

from sqlmodel import Session

from mailbot import commands, mailparse, tokens
from mailbot.domain import Party
from mailbot.errors import BadToken, NotAuthorized, TokenUsed
from mailbot.outgoing.mailer import OutgoingMail
from mailbot.service.context import ServiceContext
from mailbot.service.following import Actor, Following
from mailbot.service.inbound import ReceivedMail
from mailbot.service.transitions import Event, Transitions
from mailbot.storage import queries
from mailbot.storage.tables import ConfirmationRow, RequestRow

CONFIRMATION_TTL = timedelta(days=2)
"""How long a CANCEL or RESEND by mail waits for its sender's address to confirm it."""


class Confirming:
    """Steering a request by mail, at once or once the sender's address confirms."""

    def __init__(
        self, context: ServiceContext, transitions: Transitions, following: Following
    ) -> None:
        self.context = context
        self.settings = context.settings
        self.clock = context.clock
        self.transitions = transitions
        self.following = following

    def steer_by_mail(
        self, session: Session, message: ReceivedMail, command: commands.Command, action: str
    ) -> str:
        """CANCEL or RESEND by mail: at once when the sender is authenticated; otherwise
        only once the sender's address confirms it (a forged From cannot)."""
        row = self.following.party_request(session, message, command)
        actor = self.following.replies.actor(session, message, command)
        if message.authenticated:
            how = f"by email, sender authenticated ({message.authentication.reason})"
            return self.following.steer(session, row, action, actor, message, how)
        self.following.check_steer(session, row, action, actor)
        return self._ask_confirmation(session, row, action, message, actor)

    def _ask_confirmation(
        self, session: Session, row: RequestRow, action: str, message: ReceivedMail, actor: Actor
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
        detail = f"{action}; sender authentication: {level}"
        event = Event("confirmation-requested", actor=message.sender, detail=detail)
        self.transitions.log(session, row.id, event, message.id)
        reply_address = self.context.reply_address(key)
        context = {
            "action": action,
            "token": tokens.group(token),
            "reply_address": reply_address,
            "expires_at": now + CONFIRMATION_TTL,
        }
        mail = OutgoingMail(
            "confirmation-requested",
            actor[0],
            queries.request(session, row),
            context=context,
            reply_to=reply_address,
            carries_secret=True,
        )
        self.context.mailer.queue(session, mail, message)
        return f"{action} of {row.id} awaits confirmation by {message.sender} ({level})"

    def confirm_by_mail(
        self, session: Session, message: ReceivedMail, command: commands.Command
    ) -> str:
        """A confirmation token (typed, or the key of the reply address) carries out
        the CANCEL or RESEND it was sent for, once."""
        confirmation = self._confirmation_for(session, message, command.argument)
        now = self.clock.now()
        if confirmation.used_at is not None:
            raise TokenUsed(
                "this confirmation was already used",
                request=confirmation.request_id,
                reason="confirmation-used",
            )
        if confirmation.expires_at <= now:
            raise BadToken(
                "this confirmation expired: send the command again", reason="confirmation-expired"
            )
        confirmation.used_at = now
        row = queries.request_row(session, confirmation.request_id, for_update=True)
        assert row is not None
        contact = queries.contact_by_email(session, confirmation.email)
        language = self.following.replies.language_of(command)
        by = queries.party(contact) if contact else Party(confirmation.email, language=language)
        actor = (by, self.settings.is_operator(confirmation.email))
        if not self.following.may_follow(session, row, actor):
            raise NotAuthorized("no such request among yours", request=row.id, reason="not-yours")
        how = f"by email, confirmed by {confirmation.email}"
        done = self.following.steer(session, row, confirmation.action, actor, message, how)
        return f"{done} (confirmed)"

    def _confirmation_for(
        self, session: Session, message: ReceivedMail, argument: str
    ) -> ConfirmationRow:
        """By a typed token, whoever sends it; else by the reply address's key, from the
        address it was sent to (never for a sender whose DMARC fails)."""
        typed = [*mailparse.find_tokens(argument), *message.tokens]
        if typed:
            self.context.check_token_attempts(session, message.sender)
            for token in dict.fromkeys(typed):
                if found := queries.confirmation_by_digest(session, tokens.digest(token)):
                    return found
            raise BadToken("no confirmation has this token", reason="confirmation-unknown")
        found = None if message.forged else self.addressed(session, message)
        if found is None:
            raise BadToken(
                "write CONFIRM and the token of the confirmation email",
                reason="confirmation-missing",
            )
        if found.email != message.sender:
            raise NotAuthorized(
                "reply from the address the confirmation was sent to, or type its token",
                request=found.request_id,
                reason="confirmation-address",
            )
        return found

    def addressed(self, session: Session, message: ReceivedMail) -> ConfirmationRow | None:
        """The confirmation whose reply address the message was sent to, if any: a
        reply to it confirms even without a command."""
        for recipient in message.recipients:
            key = mailparse.plus_key(recipient, self.settings.bot.local_part)
            canonical = tokens.normalise(key) if key else None
            if canonical is None:
                continue
            if found := queries.confirmation_by_reply_key(session, tokens.digest(canonical)):
                return found
        return None
