"""The use cases. Each public method owns its transaction: it loads state, calls the
workflow, saves the new state and queues the resulting mails in one commit.

Every adapter (CLI, SMTP, IMAP, web, scheduler) calls ``Mailbot`` and nothing
deeper. Received mail enters here; its commands are handed to the use-case
families in ``opening``, ``deciding`` and ``lifecycle``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import NoReturn

from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError
from sqlmodel import Session

from mailbot import commands, mailparse, tokens
from mailbot.clock import Clock
from mailbot.config import Settings
from mailbot.domain import Delivery, InboundStatus
from mailbot.errors import (
    MailbotError,
    UnknownCommand,
)
from mailbot.mailparse import redact
from mailbot.outgoing.compose import bounced_message_id
from mailbot.outgoing.mailer import OutgoingMail
from mailbot.outgoing.outbox import FlushReport, RetryPolicy, Transport, flush, hurry, requeue
from mailbot.service import health
from mailbot.service.deciding import DecidingCases, TokenPage
from mailbot.service.inbound import RawMail, ReceivedMail, StoredMail, ignore_reason, speaker
from mailbot.service.lifecycle import LifecycleCases, SweepReport, UnknownRequest
from mailbot.service.opening import OpeningCases
from mailbot.storage import mail_queries, queries
from mailbot.storage.engine import make_engine, transaction
from mailbot.storage.tables import (
    ContactRow,
    InboundRow,
    OutboxRow,
    ValidationRow,
)

log = logging.getLogger(__name__)

__all__ = [
    "BacklogStalled",
    "Mailbot",
    "PendingPass",
    "ProcessingFailed",
    "SweepReport",
    "TokenPage",
    "UnknownRequest",
]


class ProcessingFailed(Exception):
    """A stored message whose processing failed; it is kept, marked ``failed``."""


class BacklogStalled(Exception):
    """Acting on stored mail hit a database error at ``inbound_id``; it stays stored."""

    def __init__(self, inbound_id: int, cause: Exception) -> None:
        super().__init__(f"message {inbound_id}: {cause}")
        self.inbound_id = inbound_id


@dataclass(frozen=True)
class PendingPass:
    """One pass over stored but unprocessed mail."""

    seen: int
    last_id: int
    """The highest id looked at: where the next pass starts."""
    more: bool
    """Whether messages above ``last_id`` were waiting too."""


class Mailbot(OpeningCases, DecidingCases, LifecycleCases):
    """The service every adapter talks to: mail in, decisions, the sweep, the outbox."""

    @classmethod
    def from_settings(cls, settings: Settings, clock: Clock | None = None) -> Mailbot:
        return cls(settings, make_engine(settings.database), clock)

    def receive(
        self,
        raw: bytes,
        *,
        source: str = "cli",
        recipients: tuple[str, ...] = (),
        envelope_from: str | None = None,
    ) -> str:
        """Store a raw message durably, then act on it once; returns what happened."""
        stored = self.store_inbound(
            raw, source=source, recipients=recipients, envelope_from=envelope_from
        )
        if stored.duplicate and stored.status != InboundStatus.RECEIVED:
            return f"duplicate of message {stored.id}: nothing to do"
        return self.process_inbound(stored.id)

    def store_inbound(
        self,
        raw: bytes,
        *,
        source: str,
        recipients: tuple[str, ...] = (),
        envelope_from: str | None = None,
    ) -> StoredMail:
        """Commit the raw bytes, keyed so that the same message twice is stored once."""
        return self.store_inbound_many([RawMail(raw, source, recipients, envelope_from)])[0]

    def store_inbound_many(self, messages: list[RawMail]) -> list[StoredMail]:
        """Commit several raw messages at once: one durable commit for a whole batch."""
        try:
            with transaction(self.engine) as session:
                return self._store_batch(session, messages)
        except IntegrityError:  # stored at the same instant by another instance
            if len(messages) == 1:
                with transaction(self.engine) as session:
                    return self._store_batch(session, messages)
            return [self.store_inbound_many([m])[0] for m in messages]

    def _store_batch(self, session: Session, messages: list[RawMail]) -> list[StoredMail]:
        results: list[StoredMail] = []
        known = self._stored_before(session, messages)
        fresh: dict[str, InboundRow] = {}
        now = self.clock.now()
        for message in messages:
            key = message.dedup_key
            existing = fresh.get(key) or known.get(key)
            if existing is not None:
                results.append(StoredMail(existing.id or 0, True, existing.status))
                continue
            row = message.row(now)
            session.add(row)
            fresh[key] = row
            results.append(StoredMail(0, False, row.status))
        session.flush()
        return [
            StoredMail(fresh[m.dedup_key].id or 0, r.duplicate, r.status) if not r.id else r
            for m, r in zip(messages, results, strict=True)
        ]

    @staticmethod
    def _stored_before(session: Session, messages: list[RawMail]) -> dict[str, InboundRow]:
        """Rows already stored for these messages, by their ``dedup_key``. A row
        stored by an earlier version under a legacy key counts only if its raw
        message has the same content key."""
        keys = [m.dedup_key for m in messages]
        legacy = {key: m.dedup_key for m in messages for key in m.legacy_keys}
        known = mail_queries.inbound_by_keys(session, [*keys, *legacy])
        for key, row in list(known.items()):
            if key in legacy and RawMail(row.raw).dedup_key == legacy[key]:
                known[legacy[key]] = row
        return known

    def process_pending(self, after: int = 0, limit: int = 100) -> PendingPass:
        """Act on up to ``limit`` messages stored but not yet processed (after a
        crash, an outage, a full disk), those with ids above ``after``, in order.

        A message that fails for good is marked ``failed`` and the pass goes on.
        A database error stops the pass with BacklogStalled: the message stays
        ``received`` and the caller tries again later, from past it, so that a
        message that keeps failing never holds back the others.
        """
        with transaction(self.engine) as session:
            ids = mail_queries.unprocessed_inbound(session, limit + 1, after)
        for inbound_id in ids[:limit]:
            try:
                self.process_inbound(inbound_id)
            except ProcessingFailed:
                pass  # marked failed, kept for an operator
            except OperationalError as exc:
                raise BacklogStalled(inbound_id, exc) from exc
        last = ids[:limit][-1] if ids else after
        return PendingPass(len(ids[:limit]), last, len(ids) > limit)

    def process_inbound(self, inbound_id: int) -> str:
        """Act on a stored message once. A database outage propagates (retry later);
        any other failure marks the message ``failed``, keeps it, and raises
        ProcessingFailed so that the adapter can say so."""
        try:
            return self._process_inbound(inbound_id)
        except OperationalError:
            raise
        except DBAPIError as exc:
            if exc.connection_invalidated or isinstance(exc, InterfaceError):
                raise OperationalError(exc.statement, exc.params, exc.orig or exc) from exc
            self._processing_failed(inbound_id, exc)
        except Exception as exc:
            self._processing_failed(inbound_id, exc)

    def _processing_failed(self, inbound_id: int, exc: Exception) -> NoReturn:
        """Mark a message that cannot be processed ``failed``, keep it, and say so."""
        log.exception("message %d could not be processed", inbound_id)
        with transaction(self.engine) as session:
            row = session.get(InboundRow, inbound_id)
            if row is not None and row.status == InboundStatus.RECEIVED:
                row.status = InboundStatus.FAILED
                row.outcome = f"failed: {type(exc).__name__}: {exc}"[:1000]
                row.processed_at = self.clock.now()
                self._scrub(row)
        raise ProcessingFailed(f"message {inbound_id}: {type(exc).__name__}") from exc

    def _process_inbound(self, inbound_id: int) -> str:
        with transaction(self.engine) as session:
            row = mail_queries.claim_inbound(session, inbound_id)
            if row is None:
                return "already processed"
            status, outcome = self._handle(session, row)
            row.status = status
            row.outcome = outcome
            row.processed_at = self.clock.now()
            self._scrub(row)
            outcome = row.outcome
        log.info("message %d (%s): %s", inbound_id, row.message_id or "no Message-ID", outcome)
        return outcome

    def _scrub(self, row: InboundRow) -> None:
        """Take tokens and reply keys out of a message once it is processed.

        Processing needs them (a reply key names the validation); afterwards
        the stored copy, its recipients and its outcome keep ``[redacted]``
        in their place, whatever the outcome was.
        """
        local = self.settings.bot.local_part
        row.raw = redact.raw_message(row.raw, local)
        row.recipients = redact.addresses(row.recipients, local)
        if row.envelope_from:
            row.envelope_from = redact.address(row.envelope_from, local)
        row.outcome = redact.text(row.outcome, local)

    def _handle(self, session: Session, row: InboundRow) -> tuple[InboundStatus, str]:
        assert row.id is not None
        parsed = mailparse.parse(row.raw)
        if parsed.bounce is not None:
            return InboundStatus.PROCESSED, self._record_bounce(session, row, parsed, parsed.bounce)
        if parsed.sender_problem:
            return InboundStatus.IGNORED, f"ignored: sender refused: {parsed.sender_problem}"
        if reason := ignore_reason(parsed, row, self.settings):
            return InboundStatus.IGNORED, f"ignored: {reason}"
        message = speaker(row, parsed, self.settings)
        command: commands.Command | None = None
        try:
            with session.begin_nested():
                command = self._command_of(session, message)
                if message.forged and not _carries_token(message, command):
                    return (
                        InboundStatus.IGNORED,
                        f"ignored: {command.verb} from {_dmarc_fails(message)}",
                    )
                return InboundStatus.PROCESSED, self._dispatch(session, message, command)
        except MailbotError as error:
            if message.forged:
                self._log(
                    session,
                    None,
                    f"error:{error.code}",
                    actor=message.sender,
                    inbound_id=message.id,
                    detail=f"not answered: {message.authentication.reason}",
                )
                return (
                    InboundStatus.PROCESSED,
                    f"error {error.code}, not answered: {_dmarc_fails(message)}",
                )
            if self._reject(session, message, error, command):
                return InboundStatus.PROCESSED, f"error {error.code} sent to {message.sender}"
            return InboundStatus.PROCESSED, f"error {error.code}, not answered: rate limit"

    def _command_of(self, session: Session, message: ReceivedMail) -> commands.Command:
        """The mail's command; a mail without one sent to a confirmation's reply
        address confirms it (as replying to a confirmation mail does)."""
        try:
            return commands.find_command(message.subject, message.new_text)
        except UnknownCommand:
            if self.confirmation_addressed(session, message) is None:
                raise
            return commands.Command("CONFIRM", "", "", french=False)

    def _record_bounce(
        self,
        session: Session,
        row: InboundRow,
        parsed: mailparse.ParsedMail,
        bounce: mailparse.Bounce,
    ) -> str:
        """A permanent failure of a token mail marks its validation's delivery failed
        and tells the requester; a bounce is never answered."""
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
        self._log(
            session,
            request.id,
            "delivery-failed",
            actor=sent.to_email,
            contact_id=contact.id,
            inbound_id=row.id,
            detail=bounce.diagnostic[:500],
        )
        if request.pending:
            self.mailer.queue(
                session,
                OutgoingMail(
                    "delivery-failed",
                    request.requester,
                    request,
                    context={
                        "failed_contact": queries.party(contact),
                        "diagnostic": " ".join(bounce.diagnostic.split())[:300],
                    },
                ),
                None,
            )
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
        bot = self.settings.bot
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

    def _dispatch(self, session: Session, message: ReceivedMail, command: commands.Command) -> str:
        if command.verb == "CHANGE":
            return self._open_by_mail(session, message, command)
        if command.verb in ("ACCEPT", "REFUSE"):
            return self._decide_by_mail(session, message, command)
        if command.verb == "CONFIRM":
            return self._confirm_by_mail(session, message, command)
        if command.verb == "HELP":
            return self._answer(session, message, "help", {"commands": commands.VERBS})
        if command.verb == "LIST":
            return self._list_by_mail(session, message)
        if command.verb in ("CANCEL", "RESEND"):
            return self._steer_by_mail(session, message, command)
        row = self._party_request(session, message, command)
        return self._answer(session, message, "status", {}, queries.request(session, row))

    def flush_outbox(
        self, transport: Transport, keep_going: Callable[[], bool] = lambda: True
    ) -> FlushReport:
        """Send the mail that is due; ``keep_going`` lets ``serve`` stop between mails."""
        outgoing = self.settings.outgoing
        policy = RetryPolicy(
            lifetime=timedelta(hours=outgoing.queue_lifetime_hours),
            max_backoff=timedelta(seconds=outgoing.max_backoff_seconds),
            max_attempts=outgoing.max_attempts,
        )
        return flush(self.engine, transport, self.clock.now, policy, keep_going=keep_going)

    def retry_outbox(self, ids: list[int] | None) -> list[OutboxRow]:
        """Queue dead mail again (these ids, or all dead mail) for a fresh queue lifetime."""
        rows = requeue(self.engine, ids, self.clock.now())
        for row in rows:
            log.info("outbox %s to %s queued again", row.id, row.to_email)
        return rows

    def hurry_outbox(self) -> int:
        """Make mail waiting out a backoff due now (``outbox flush --all``)."""
        return hurry(self.engine, self.clock.now())

    def inbound_counts(self) -> dict[str, int]:
        """Stored messages by status; ``received`` is the backlog not yet acted on."""
        with transaction(self.engine) as session:
            return mail_queries.inbound_counts(session)

    def health(self) -> str | None:
        """Why mail cannot be taken now, or None when it can (``/healthz``)."""
        return health.problem(self.engine, self.settings)


def _carries_token(message: ReceivedMail, command: commands.Command) -> bool:
    """Whether a mail whose sender DMARC refutes still carries a credential: a token
    typed or quoted for a decision, a token typed for a confirmation."""
    typed = bool(message.tokens or mailparse.find_tokens(command.argument))
    if command.verb in ("ACCEPT", "REFUSE"):
        attempt = tokens.looks_like_token_attempt(command.argument)
        return typed or attempt or bool(message.quoted_tokens)
    return command.verb == "CONFIRM" and typed


def _dmarc_fails(message: ReceivedMail) -> str:
    return f"{message.sender}, whose DMARC fails"
