"""The service every adapter (CLI, SMTP, IMAP, web, scheduler) talks to.

``Mailbot`` is a facade: each public method delegates to one use-case object,
and each use case owns its transaction (load state, call the workflow, commit
the transition and the mail it queues, at once). The use cases, in the order
a received mail meets them:

- ``receiving``: store raw mail, act on it once, the backlog pass;
  ``bounces`` for bounces of our own mail;
- ``by_mail``: a mail's command handed to its verb (``mailbot.commands``);
- ``opening`` (CHANGE), ``deciding`` (ACCEPT, REFUSE, the link page),
  ``following`` (STATUS, LIST, CANCEL, RESEND), ``confirming`` (CONFIRM);
- ``sweeping``: held decisions, expiry, reminders;
- ``transitions``: the one "commit a transition" step they all end with,
  ``effects`` what it carries out, ``replies`` the answers and error mails.

Database outages leave the service as ``errors.StorageUnavailable``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy.engine import Engine

from mailbot.clock import Clock, SystemClock
from mailbot.config import Settings
from mailbot.domain import Channel, Decision, InboundStatus, Request
from mailbot.errors import BacklogStalled, ProcessingFailed, UnknownRequest
from mailbot.intake import RawMail
from mailbot.outgoing.mailer import Mailer
from mailbot.outgoing.outbox import FlushReport, RetryPolicy, Transport, flush, hurry, requeue
from mailbot.service import health
from mailbot.service.bounces import Bounces
from mailbot.service.by_mail import MailUseCases
from mailbot.service.confirming import Confirming
from mailbot.service.context import ServiceContext, translates_outages
from mailbot.service.deciding import Deciding, TokenPage
from mailbot.service.effects import Effects
from mailbot.service.following import Following
from mailbot.service.importer import ImportFile, ImportReport, apply_import
from mailbot.service.inbound import StoredMail
from mailbot.service.opening import Opening
from mailbot.service.receiving import PendingPass, Receiving
from mailbot.service.replies import Replies
from mailbot.service.reporting import Reporting
from mailbot.service.sweeping import Sweeping, SweepReport
from mailbot.service.transitions import Transitions
from mailbot.storage.engine import check_schema, make_engine
from mailbot.storage.limits import RateLimits
from mailbot.storage.tables import OutboxRow
from mailbot.storage.turns import Turn

log = logging.getLogger(__name__)

__all__ = [
    "BacklogStalled",
    "Mailbot",
    "PendingPass",
    "ProcessingFailed",
    "SweepReport",
    "TokenPage",
    "Turn",
    "UnknownRequest",
]


class Mailbot:
    """Mail in, decisions, the sweep, the outbox: one method per thing an adapter does."""

    def __init__(self, settings: Settings, engine: Engine, clock: Clock | None = None) -> None:
        self.settings = settings
        self.engine = engine
        self.clock = clock or SystemClock()
        self.mailer = Mailer(settings, self.clock)
        self.renderer = self.mailer.renderer
        self.on_mail_queued = self.mailer.on_mail_queued
        """Called after a commit that queued mail (``serve`` flushes the outbox then)."""
        self.limits = RateLimits(settings.policy, engine, self.clock)
        """Counted in the database, so that every instance on it shares them."""
        self.reports = Reporting(settings, engine, self.clock)
        """The read side: what the CLI and the link page show."""
        self.context = context = ServiceContext(
            settings, engine, self.clock, self.mailer, self.limits
        )
        transitions = Transitions(context, Effects(context))
        replies = Replies(context, transitions)
        self.opening = Opening(context, transitions)
        self.deciding = Deciding(context, transitions)
        self.following = Following(context, transitions, replies)
        self.confirming = Confirming(context, transitions, self.following)
        self.sweeping = Sweeping(context, transitions)
        cases = MailUseCases(self.opening, self.deciding, self.following, self.confirming, replies)
        self.receiving = Receiving(context, transitions, cases, Bounces(context, transitions))

    @classmethod
    def from_settings(cls, settings: Settings, clock: Clock | None = None) -> Mailbot:
        return cls(settings, make_engine(settings.database), clock)

    # -- received mail (receiving.py) ---------------------------------------------

    @translates_outages
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

    @translates_outages
    def store_inbound_many(self, messages: list[RawMail]) -> list[StoredMail]:
        """Commit several raw messages at once: one durable commit for a whole batch."""
        return self.receiving.store(messages)

    @translates_outages
    def process_pending(self, after: int = 0, limit: int = 100) -> PendingPass:
        """Act on stored mail not yet acted on (see ``Receiving.process_pending``)."""
        return self.receiving.process_pending(after, limit)

    @translates_outages
    def process_next(self, after: int = 0) -> int | None:
        """A worker's step: claim the next stored message and act on it (see
        ``Receiving.process_next``); its id, or None when none waits."""
        return self.receiving.process_next(after)

    @translates_outages
    def process_inbound(self, inbound_id: int) -> str:
        """Act on a stored message once (see ``Receiving.process``)."""
        return self.receiving.process(inbound_id)

    # -- the link page (deciding.py) ----------------------------------------------

    @translates_outages
    def token_page(self, typed: str) -> TokenPage:
        return self.deciding.token_page(typed)

    @translates_outages
    def decide_with_token(
        self, typed: str, decision: Decision, channel: Channel, *, actor: str | None = None
    ) -> Request:
        return self.deciding.decide_with_token(typed, decision, channel, actor=actor)

    @translates_outages
    def hold_with_token(self, typed: str, decision: Decision) -> TokenPage:
        return self.deciding.hold_with_token(typed, decision)

    @translates_outages
    def undo_page(self, typed: str) -> TokenPage:
        return self.deciding.undo_page(typed)

    @translates_outages
    def undo_with_token(self, typed: str) -> TokenPage:
        return self.deciding.undo_with_token(typed)

    # -- operators (following.py) and the scheduler (sweeping.py) -----------------

    @translates_outages
    def cancel_request(self, request_id: str) -> Request:
        return self.following.cancel_request(request_id)

    @translates_outages
    def resend_request(self, request_id: str) -> Request:
        return self.following.resend_request(request_id)

    @translates_outages
    def sweep(self, now: datetime | None = None) -> SweepReport:
        """The scheduler's periodic job (see ``Sweeping.sweep``)."""
        return self.sweeping.sweep(now or self.clock.now())

    @translates_outages
    def apply_import(self, data: ImportFile) -> ImportReport:
        """Upsert the contacts and services of an import file, all or nothing."""
        return apply_import(self.engine, data, self.clock.now())

    # -- the outbox and the state of the service ----------------------------------

    @translates_outages
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
        return flush(
            self.engine,
            transport,
            self.clock.now,
            policy,
            keep_going=keep_going,
            render=self.mailer.render_queued,
        )

    @translates_outages
    def retry_outbox(self, ids: list[int] | None) -> list[OutboxRow]:
        """Queue dead mail again (these ids, or all dead mail) for a fresh queue lifetime."""
        rows = requeue(self.engine, ids, self.clock.now())
        for row in rows:
            log.info("outbox %s to %s queued again", row.id, row.to_email)
        return rows

    @translates_outages
    def hurry_outbox(self) -> int:
        """Make mail waiting out a backoff due now (``outbox flush --all``)."""
        return hurry(self.engine, self.clock.now())

    @translates_outages
    def newest_inbound_id(self) -> int:
        """The id of the message stored last: while it moves, mail is arriving."""
        return self.reports.newest_inbound_id()

    @translates_outages
    def inbound_counts(self) -> dict[InboundStatus, int]:
        """Stored messages by status; ``received`` is the backlog not yet acted on."""
        return self.reports.inbound_counts()

    def turn(self, name: str) -> Turn:
        """One process at a time among all instances on this database, at what
        ``name`` stands for (the agency mailbox's reader): ``take`` it, then
        ``release`` it."""
        return Turn(self.engine, name)

    def check_schema(self) -> None:
        """Raise ``SchemaOutOfDate`` unless the database is at the newest migration
        (``serve`` refuses to start on a database ``mailbot init`` has not upgraded)."""
        check_schema(self.engine)

    def health(self) -> str | None:
        """Why mail cannot be taken now, or None when it can (``/healthz``)."""
        return health.problem(self.engine, self.settings)
