"""Received mail, in flow order: store the raw bytes durably, then act on each
stored message once (parse, ignore or answer, find its command, dispatch it to
its verb), and the backlog pass that acts on what an outage left stored.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import NoReturn, TypeVar

from sqlalchemy.exc import DBAPIError
from sqlmodel import Session

from mailbot import commands, intake, logs, mailparse, metrics
from mailbot.domain import InboundStatus
from mailbot.errors import (
    BacklogStalled,
    MailbotError,
    ProcessingFailed,
    StorageUnavailable,
    UnknownCommand,
)
from mailbot.intake import RawMail
from mailbot.mailparse import redact
from mailbot.service.bounces import Bounces
from mailbot.service.by_mail import MailUseCases
from mailbot.service.context import OutagesTranslated, ServiceContext, is_outage
from mailbot.service.inbound import ReceivedMail, StoredMail, ignore_reason, speaker
from mailbot.service.transitions import Event, Transitions
from mailbot.storage import mail_queries
from mailbot.storage.engine import DriverStatements, reading, transaction, writing
from mailbot.storage.tables import InboundRow

log = logging.getLogger(__name__)
T = TypeVar("T")
ALREADY_PROCESSED = "already processed"


@dataclass(frozen=True)
class PendingPass:
    """One pass over stored but unprocessed mail."""

    seen: int
    last_id: int
    """The highest id looked at: where the next pass starts."""
    more: bool
    """Whether messages above ``last_id`` were waiting too."""


class Receiving:
    """Stores received mail, then acts on it: the way in for SMTP, IMAP and the CLI."""

    def __init__(
        self,
        context: ServiceContext,
        transitions: Transitions,
        cases: MailUseCases,
        bounces: Bounces,
    ) -> None:
        self.context = context
        self.transitions = transitions
        self.cases = cases
        self.bounces = bounces

    # -- storing ------------------------------------------------------------------

    def store(self, messages: list[RawMail]) -> list[StoredMail]:
        """Commit several raw messages at once: one durable commit for a whole
        batch, with the same statements as the pipe's ``--store-only``."""
        with writing(self.context.engine) as connection:
            statements = DriverStatements(connection)
            stored = intake.store_many(statements, messages, self.context.clock.now())
        metrics.inbound_duplicates(sum(s.duplicate for s in stored))
        return [StoredMail(s.id, s.duplicate, s.status) for s in stored]

    # -- acting on stored mail ----------------------------------------------------

    def process_pending(self, after: int, limit: int) -> PendingPass:
        """Act on up to ``limit`` messages stored but not yet processed (after a
        crash, an outage, a full disk), those with ids above ``after``, in order.

        A message that fails for good is marked ``failed`` and the pass goes on.
        A database outage stops the pass with BacklogStalled: the message stays
        ``received`` and the caller tries again later, from past it, so that a
        message that keeps failing never holds back the others.
        """
        with reading(self.context.engine) as session:
            ids = mail_queries.unprocessed_inbound(session, limit + 1, after)
        for inbound_id in ids[:limit]:
            try:
                self.process(inbound_id)
            except ProcessingFailed:
                pass  # marked failed, kept for an operator
            except StorageUnavailable as exc:
                raise BacklogStalled(inbound_id, exc) from exc
        last = ids[:limit][-1] if ids else after
        return PendingPass(len(ids[:limit]), last, len(ids) > limit)

    def process_next(self, after: int = 0) -> int | None:
        """Act on the oldest stored message above ``after`` that nobody is acting
        on; its id, or None when none waits. A worker's step: any number of
        workers, on any number of machines, never act on one message twice.

        On PostgreSQL the claim is ``FOR UPDATE SKIP LOCKED``: each worker
        locks a different message, and the lock lasts until the transaction
        that records the effects commits (a worker that dies mid-message never
        commits, and the message is claimed again: the lock is the lease, see
        ``storage.engine``). On SQLite a write transaction excludes every
        other, so the message is read and parsed first, then claimed by
        checking it is still unprocessed. A failed message is marked and its
        id returned; a database outage raises BacklogStalled with its id.
        """
        claimed: list[int] = []
        act: Callable[[], object] = partial(self._process_next, after, claimed)
        if self.context.engine.dialect.name == "sqlite":
            with reading(self.context.engine) as session:
                found = mail_queries.next_unprocessed(session, after)
            if found is None:
                return None
            claimed.append(found[0])
            act = partial(self._process, *found)
        try:
            self._guarded(act, claimed)
        except ProcessingFailed:
            pass  # marked failed, kept for an operator
        except StorageUnavailable as exc:
            if not claimed:
                raise
            raise BacklogStalled(claimed[0], exc) from exc
        return claimed[0] if claimed else None

    def process(self, inbound_id: int) -> str:
        """Act on a stored message once. A database outage raises StorageUnavailable
        (retry later); any other failure marks the message ``failed``, keeps it,
        and raises ProcessingFailed so that the adapter can say so."""
        return self._guarded(partial(self._process, inbound_id), [inbound_id])

    def _guarded(self, act: Callable[[], T], claimed: list[int]) -> T:
        """``act``, with its outages translated and any other failure marking the
        claimed message ``failed`` (nothing is marked if none was claimed)."""
        with OutagesTranslated():  # marking it failed may meet the outage too
            try:
                return act()
            except DBAPIError as exc:
                if is_outage(exc) or not claimed:
                    raise
                self._processing_failed(claimed[0], exc)
            except Exception as exc:
                if not claimed:
                    raise
                self._processing_failed(claimed[0], exc)

    def _processing_failed(self, inbound_id: int, exc: Exception) -> NoReturn:
        """Mark a message that cannot be processed ``failed``, keep it, and say so."""
        log.exception(
            "message %d could not be processed",
            inbound_id,
            extra={"inbound_id": inbound_id, "outcome": InboundStatus.FAILED.value},
        )
        with transaction(self.context.engine) as session:
            # Locked: another worker may have claimed it since, and acted on it.
            row = session.get(InboundRow, inbound_id, with_for_update=True)
            if row is not None and row.status == InboundStatus.RECEIVED:
                row.status = InboundStatus.FAILED
                row.outcome = f"failed: {type(exc).__name__}: {exc}"[:1000]
                row.processed_at = self.context.clock.now()
                self._scrub(row)
        metrics.inbound_handled(InboundStatus.FAILED, None)
        raise ProcessingFailed(f"message {inbound_id}: {type(exc).__name__}") from exc

    def _process(self, inbound_id: int, raw: bytes | None = None) -> str:
        """Parse the message, then claim it, act on it and record the outcome in one
        transaction. Parsing is pure and the slowest step: done first, it does not
        hold SQLite's write lock, which the listener's stores wait for."""
        if raw is None:
            with reading(self.context.engine) as session:
                found = session.get(InboundRow, inbound_id)
                if found is None or found.status != InboundStatus.RECEIVED:
                    return ALREADY_PROCESSED
                raw = found.raw
        parsed = mailparse.parse(raw)
        with transaction(self.context.engine) as session:
            row = mail_queries.claim_inbound(session, inbound_id)
            if row is None:
                return ALREADY_PROCESSED
            request_id = self._record(session, row, parsed)
        return self._done(row, request_id)

    def _process_next(self, after: int, claimed: list[int]) -> str | None:
        """Claim the next message (SKIP LOCKED), then parse it and act, in one
        transaction; its id goes into ``claimed`` as soon as it is locked."""
        with transaction(self.context.engine) as session:
            row = mail_queries.claim_next_inbound(session, after)
            if row is None or row.id is None:
                return None
            claimed.append(row.id)
            request_id = self._record(session, row, mailparse.parse(row.raw))
        return self._done(row, request_id)

    def _record(
        self, session: Session, row: InboundRow, parsed: mailparse.ParsedMail
    ) -> str | None:
        """Act on a claimed message and mark it done; the request it was about."""
        status, outcome = self._handle(session, row, parsed)
        row.status = status
        row.outcome = outcome
        row.processed_at = self.context.clock.now()
        self._scrub(row)
        return logs.noted_request(session.info)

    def _done(self, row: InboundRow, request_id: str | None) -> str:
        """Say what was done with a message, once its transaction is committed."""
        log.info(
            "message %d (%s): %s",
            row.id,
            row.message_id or "no Message-ID",
            row.outcome,
            extra={"inbound_id": row.id, "request_id": request_id, "outcome": row.status},
        )
        metrics.inbound_handled(row.status, (row.processed_at or row.received_at) - row.received_at)
        return row.outcome

    def _scrub(self, row: InboundRow) -> None:
        """Take tokens and reply keys out of a message once it is processed.

        Processing needs them (a reply key names the validation); afterwards
        the stored copy, its recipients and its outcome keep ``[redacted]``
        in their place, whatever the outcome was.
        """
        local = self.context.settings.bot.local_part
        row.raw = redact.raw_message(row.raw, local)
        row.recipients = redact.addresses(row.recipients, local)
        if row.envelope_from:
            row.envelope_from = redact.address(row.envelope_from, local)
        row.outcome = redact.text(row.outcome, local)

    def _handle(
        self, session: Session, row: InboundRow, parsed: mailparse.ParsedMail
    ) -> tuple[InboundStatus, str]:
        """Decide on a parsed message: a bounce, mail never acted on, or a command."""
        assert row.id is not None
        settings = self.context.settings
        if parsed.bounce is not None:
            return InboundStatus.PROCESSED, self.bounces.record(session, row, parsed, parsed.bounce)
        if parsed.sender_problem:
            return InboundStatus.IGNORED, f"ignored: sender refused: {parsed.sender_problem}"
        if reason := ignore_reason(parsed, row, settings):
            return InboundStatus.IGNORED, f"ignored: {reason}"
        return self._act(session, speaker(row, parsed, settings))

    def _act(self, session: Session, mail: ReceivedMail) -> tuple[InboundStatus, str]:
        """Find the mail's command and hand it to its verb; a failed command is
        answered with an error mail (unless the sender is forged or had enough)."""
        command: commands.Command | None = None
        try:
            with session.begin_nested():
                command = self._command_of(session, mail)
                if mail.forged and not _carries_credential(mail, command):
                    return (
                        InboundStatus.IGNORED,
                        f"ignored: {command.verb} from {_dmarc_fails(mail)}",
                    )
                return InboundStatus.PROCESSED, commands.dispatch(
                    self.cases.bound(session, mail), command
                )
        except MailbotError as error:
            if mail.forged:
                detail = f"not answered: {mail.authentication.reason}"
                event = Event(f"error:{error.code}", actor=mail.sender, detail=detail)
                self.transitions.log(session, None, event, mail.id)
                return (
                    InboundStatus.PROCESSED,
                    f"error {error.code}, not answered: {_dmarc_fails(mail)}",
                )
            if self.cases.replies.reject(session, mail, error, command):
                return InboundStatus.PROCESSED, f"error {error.code} sent to {mail.sender}"
            return InboundStatus.PROCESSED, f"error {error.code}, not answered: rate limit"

    def _command_of(self, session: Session, mail: ReceivedMail) -> commands.Command:
        """The mail's command; a mail without one sent to a confirmation's reply
        address confirms it (as replying to a confirmation mail does)."""
        try:
            return commands.find_command(mail.subject, mail.new_text)
        except UnknownCommand:
            if self.cases.confirming.addressed(session, mail) is None:
                raise
            return commands.Command("CONFIRM", "", "", french=False)


def _carries_credential(mail: ReceivedMail, command: commands.Command) -> bool:
    """Whether a mail whose sender DMARC refutes still carries a token its verb acts on."""
    typed = bool(mail.tokens or mailparse.find_tokens(command.argument))
    verb = commands.verb_of(command)
    return verb.carries_credential(command, typed, bool(mail.quoted_tokens))


def _dmarc_fails(mail: ReceivedMail) -> str:
    return f"{mail.sender}, whose DMARC fails"
