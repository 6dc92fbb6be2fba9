"""The use cases. Each public method owns its transaction: it loads state, calls the
workflow, saves the new state and queues the resulting mails in one commit.

Every adapter (CLI, SMTP, IMAP, web, scheduler) calls these and nothing deeper.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlmodel import Session

from mailbot import commands, mailparse, store, tokens, workflow
from mailbot.addresses import normalise_email
from mailbot.clock import Clock, SystemClock
from mailbot.compose import BOUNCE_PREFIX
from mailbot.config import Settings
from mailbot.db import make_engine, transaction
from mailbot.domain import Channel, Decision, Party, Request, Role, Validation
from mailbot.errors import (
    AmbiguousDecision,
    BadToken,
    MailbotError,
    MalformedRequest,
    NotAuthorized,
    TooManyAttempts,
    UnknownContact,
    UnknownService,
)
from mailbot.inbound import Inbound, RawMessage, Stored, ignore_reason, speaker
from mailbot.mailer import Mailer, Outgoing
from mailbot.models import (
    ChangeRequest,
    Contact,
    EventRow,
    InboundMessage,
    OutboxRow,
    RoleChangeRow,
    ValidationRow,
    ValidationToken,
)
from mailbot.outbox import FlushReport, Transport, flush
from mailbot.views import RequestView

log = logging.getLogger(__name__)

ANSWER_EVENTS = ("error", "help", "status", "list")
"""Mails that answer a person's mistake or question: rate-limited per address."""
LIST_LIMIT = 50
RESEND_INTERVAL = timedelta(hours=1)
OPERATOR_ACTOR = "operator@cli"
"""How the event log names an operator acting through the CLI."""


class UnknownRequest(LookupError):
    """An operator named a request that does not exist."""


@dataclass(frozen=True)
class SweepReport:
    expired: int = 0
    reminded: int = 0


@dataclass(frozen=True)
class ListEntry:
    """One line of a LIST answer."""

    request: RequestView
    awaits_you: bool
    you_requested: bool


class ProcessingFailed(Exception):
    """A stored message whose processing failed; it is kept, marked ``failed``."""


@dataclass(frozen=True)
class TokenPage:
    """A token's request and the validation it stands for."""

    request: Request
    validation: Validation

    @property
    def usable(self) -> bool:
        return self.request.pending and self.validation.pending


class Mailbot:
    def __init__(self, settings: Settings, engine: Engine, clock: Clock | None = None) -> None:
        self.settings = settings
        self.engine = engine
        self.clock = clock or SystemClock()
        self.mailer = Mailer(settings, self.clock)
        self.renderer = self.mailer.renderer
        self.on_mail_queued = self.mailer.on_mail_queued
        """Called after a commit that queued mail (``serve`` flushes the outbox then)."""

    @classmethod
    def from_settings(cls, settings: Settings, clock: Clock | None = None) -> Mailbot:
        return cls(settings, make_engine(settings.database), clock)

    # -- inbound mail -------------------------------------------------------------

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
        if stored.duplicate and stored.status != "received":
            return f"duplicate of message {stored.id}: nothing to do"
        return self.process_inbound(stored.id)

    def store_inbound(
        self,
        raw: bytes,
        *,
        source: str,
        recipients: tuple[str, ...] = (),
        envelope_from: str | None = None,
    ) -> Stored:
        """Commit the raw bytes, keyed so that the same message twice is stored once."""
        return self.store_inbound_many([RawMessage(raw, source, recipients, envelope_from)])[0]

    def store_inbound_many(self, messages: list[RawMessage]) -> list[Stored]:
        """Commit several raw messages at once: one durable commit for a whole batch."""
        try:
            with transaction(self.engine) as session:
                return self._store_batch(session, messages)
        except IntegrityError:  # stored at the same instant by another instance
            if len(messages) == 1:
                with transaction(self.engine) as session:
                    return self._store_batch(session, messages)
            return [self.store_inbound_many([m])[0] for m in messages]

    def _store_batch(self, session: Session, messages: list[RawMessage]) -> list[Stored]:
        results: list[Stored] = []
        known = store.inbound_by_keys(session, [m.dedup_key for m in messages])
        fresh: dict[str, InboundMessage] = {}
        now = self.clock.now()
        for message in messages:
            key = message.dedup_key
            existing = fresh.get(key) or known.get(key)
            if existing is not None:
                results.append(Stored(existing.id or 0, True, existing.status))
                continue
            row = message.row(now)
            session.add(row)
            fresh[key] = row
            results.append(Stored(0, False, row.status))
        session.flush()
        return [
            Stored(fresh[m.dedup_key].id or 0, r.duplicate, r.status) if not r.id else r
            for m, r in zip(messages, results, strict=True)
        ]

    def process_pending(self) -> int:
        """Process messages stored but never processed (e.g. after a crash)."""
        with transaction(self.engine) as session:
            ids = store.unprocessed_inbound(session)
        for inbound_id in ids:
            self.process_inbound(inbound_id)
        return len(ids)

    def process_inbound(self, inbound_id: int) -> str:
        """Act on a stored message once. A database outage propagates (retry later);
        any other failure marks the message ``failed``, keeps it, and raises
        ProcessingFailed so that the adapter can say so."""
        try:
            return self._process_inbound(inbound_id)
        except OperationalError:
            raise
        except Exception as exc:
            log.exception("message %d could not be processed", inbound_id)
            with transaction(self.engine) as session:
                row = session.get(InboundMessage, inbound_id)
                if row is not None and row.status == "received":
                    row.status = "failed"
                    row.outcome = f"failed: {type(exc).__name__}: {exc}"[:1000]
                    row.processed_at = self.clock.now()
            raise ProcessingFailed(f"message {inbound_id}: {type(exc).__name__}") from exc

    def _process_inbound(self, inbound_id: int) -> str:
        with transaction(self.engine) as session:
            row = store.claim_inbound(session, inbound_id)
            if row is None:
                return "already processed"
            status, outcome = self._handle(session, row)
            row.status = status
            row.outcome = outcome
            row.processed_at = self.clock.now()
        log.info("message %d (%s): %s", inbound_id, row.message_id or "no Message-ID", outcome)
        return outcome

    def _handle(self, session: Session, row: InboundMessage) -> tuple[str, str]:
        assert row.id is not None
        parsed = mailparse.parse(row.raw)
        if parsed.bounce is not None:
            return "processed", self._record_bounce(session, row, parsed, parsed.bounce)
        if reason := ignore_reason(parsed, row, self.settings):
            return "ignored", f"ignored: {reason}"
        message = speaker(row, parsed, self.settings)
        command: commands.Command | None = None
        try:
            with session.begin_nested():
                command = commands.find_command(message.subject, message.new_text)
                return "processed", self._dispatch(session, message, command)
        except MailbotError as error:
            if self._reject(session, message, error, command):
                return "processed", f"error {error.code} sent to {message.sender}"
            return "processed", f"error {error.code}, not answered: rate limit"

    def _record_bounce(
        self,
        session: Session,
        row: InboundMessage,
        parsed: mailparse.ParsedMessage,
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
        if validation is None or validation.delivery == "failed":
            return f"bounce of {sent.event} to {sent.to_email} noted"
        validation.delivery = "failed"
        request_row = store.request_row(session, validation.request_id)
        contact = session.get(Contact, validation.contact_id)
        assert request_row is not None
        assert contact is not None
        request = store.request(session, request_row)
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
                Outgoing(
                    "delivery-failed",
                    request.requester,
                    request,
                    context={
                        "failed_contact": store.party(contact),
                        "diagnostic": " ".join(bounce.diagnostic.split())[:300],
                    },
                ),
                None,
            )
        return f"bounce: the validation mail to {sent.to_email} failed ({request.id})"

    def _bounced_mail(
        self,
        session: Session,
        row: InboundMessage,
        parsed: mailparse.ParsedMessage,
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
        for address in addresses:
            key = mailparse.plus_key(address, bot.local_part) or ""
            if key.startswith(BOUNCE_PREFIX) and address.lower().endswith(f"@{bot.domain}"):
                mid = f"{key.removeprefix(BOUNCE_PREFIX).lower()}@{bot.domain}"
                if found := store.sent_mail(session, (mid,)):
                    return found
        if bounce.original_message_id:
            return store.sent_mail(session, (bounce.original_message_id,))
        return None

    def _dispatch(self, session: Session, message: Inbound, command: commands.Command) -> str:
        if command.verb == "CHANGE":
            return self._open_by_mail(session, message, command)
        if command.verb in ("ACCEPT", "REFUSE"):
            return self._decide_by_mail(session, message, command)
        if command.verb == "HELP":
            return self._answer(session, message, "help", {"commands": commands.VERBS})
        if command.verb == "LIST":
            return self._list_by_mail(session, message)
        row = self._party_request(session, message, command)
        if command.verb == "STATUS":
            return self._answer(session, message, "status", {}, store.request(session, row))
        if command.verb == "CANCEL":
            return self._cancel(session, row, self._actor(session, message), message)
        return self._resend(session, row, self._actor(session, message), message)

    # -- following and steering requests ------------------------------------------

    def _actor(self, session: Session, message: Inbound) -> tuple[Party, bool]:
        """The sender as a party, and whether they are an operator."""
        contact = store.contact_by_email(session, message.sender)
        party = store.party(contact) if contact else Party(email=message.sender)
        return party, self.settings.is_operator(message.sender)

    def _party_request(
        self, session: Session, message: Inbound, command: commands.Command
    ) -> ChangeRequest:
        """The request a command names, if the sender may see it.

        Anyone else gets the same answer as for an id that does not exist, so
        that request ids cannot be probed.
        """
        if not commands.is_request_id(command.argument):
            raise MalformedRequest("a request id looks like CR-7K2QX9MD", line=command.line)
        row = store.request_row(session, command.argument.strip(), for_update=True)
        if row is None:
            raise NotAuthorized("no such request among yours", line=command.line)
        request = store.request(session, row)
        party, operator = self._actor(session, message)
        if not (
            operator or any(p.same_as(party) for p in (*request.parties, request.service.admin))
        ):
            raise NotAuthorized("no such request among yours", line=command.line)
        return row

    def _answer(
        self,
        session: Session,
        message: Inbound,
        event: str,
        context: dict[str, Any],
        request: Request | None = None,
    ) -> str:
        """Answer a question (help, status, list) by mail, within the answer rate limit."""
        if self.mailer.answers_exhausted(session, message.sender):
            return f"{event} not sent: rate limit"
        party, _ = self._actor(session, message)
        self.mailer.queue(session, Outgoing(event, party, request, context=context), message)
        return f"{event} sent to {message.sender}"

    def _list_by_mail(self, session: Session, message: Inbound) -> str:
        party, _ = self._actor(session, message)
        rows = store.requests_of(session, party.email, party.id, LIST_LIMIT + 1)
        entries = []
        for row in rows[:LIST_LIMIT]:
            request = store.request(session, row)
            own = request.validation_of(party)
            entries.append(
                ListEntry(
                    RequestView.of(request),
                    awaits_you=bool(own and own.pending and request.pending),
                    you_requested=request.requester.same_as(party),
                )
            )
        context = {"entries": entries, "truncated": len(rows) > LIST_LIMIT, "limit": LIST_LIMIT}
        return self._answer(session, message, "list", context)

    def _cancel(
        self,
        session: Session,
        row: ChangeRequest,
        actor: tuple[Party, bool],
        message: Inbound | None,
    ) -> str:
        by, operator = actor
        transition = workflow.cancel(
            store.request(session, row), by=by, by_operator=operator, now=self.clock.now()
        )
        self._save_state(session, row, transition.request)
        self._log(
            session,
            row.id,
            "request-cancelled",
            actor=by.email,
            inbound_id=message.id if message else None,
        )
        self._carry_out(session, transition.request, transition.effects, message)
        return f"request {row.id} cancelled by {by.email}"

    def _resend(
        self,
        session: Session,
        row: ChangeRequest,
        actor: tuple[Party, bool],
        message: Inbound | None,
    ) -> str:
        by, operator = actor
        since = self.clock.now() - RESEND_INTERVAL
        if store.recent_request_events(session, row.id, "tokens-resent", since):
            raise TooManyAttempts("tokens were resent less than an hour ago", request=row.id)
        request = store.request(session, row)
        transition = workflow.resend(request, by=by, by_operator=operator)
        self._log(
            session,
            row.id,
            "tokens-resent",
            actor=by.email,
            inbound_id=message.id if message else None,
            detail=", ".join(
                e.contact.email for e in transition.effects if isinstance(e, workflow.AskToValidate)
            ),
        )
        self._carry_out(session, request, transition.effects, message)
        return f"fresh tokens sent for {row.id}"

    def cancel_request(self, request_id: str) -> Request:
        """An operator withdraws a request (``mailbot requests cancel``)."""
        with transaction(self.engine) as session:
            row = self._request_for_operator(session, request_id)
            self._cancel(session, row, (Party(email=OPERATOR_ACTOR), True), None)
            return store.request(session, row)

    def resend_request(self, request_id: str) -> Request:
        """An operator re-issues tokens (``mailbot requests resend``)."""
        with transaction(self.engine) as session:
            row = self._request_for_operator(session, request_id)
            self._resend(session, row, (Party(email=OPERATOR_ACTOR), True), None)
            return store.request(session, row)

    def _request_for_operator(self, session: Session, request_id: str) -> ChangeRequest:
        row = store.request_row(session, request_id, for_update=True)
        if row is None:
            raise UnknownRequest(f"no request {request_id}")
        return row

    # -- the sweep ----------------------------------------------------------------

    def sweep(self, now: datetime | None = None) -> SweepReport:
        """Expire what is stale, then remind the silent: the scheduler's periodic job.

        It reads only due rows, through indexes on their due times, and is safe
        beside another sweep: each request is handled under its row lock, and
        one whose lock is taken is left to the sweep that holds it.
        """
        now = now or self.clock.now()
        expired = sum(
            self._expire(request_id, now) for request_id in self._due(store.due_expiries, now)
        )
        reminded = sum(
            self._remind(request_id, now) for request_id in self._due(store.due_reminders, now)
        )
        return SweepReport(expired=expired, reminded=reminded)

    def _due(self, query: Any, now: datetime) -> list[str]:
        with transaction(self.engine) as session:
            return list(query(session, now))

    def _expire(self, request_id: str, now: datetime) -> int:
        with transaction(self.engine) as session:
            row = store.request_row(session, request_id, for_update=True, skip_locked=True)
            if row is None:
                return 0
            transition = workflow.expire(store.request(session, row), now)
            if not transition.effects:
                return 0
            self._save_state(session, row, transition.request)
            self._log(session, row.id, "request-expired", actor=None)
            self._carry_out(session, transition.request, transition.effects, None)
            return 1

    def _remind(self, request_id: str, now: datetime) -> int:
        with transaction(self.engine) as session:
            row = store.request_row(session, request_id, for_update=True, skip_locked=True)
            if row is None:
                return 0
            transition = workflow.remind(
                store.request(session, row), now, self.settings.policy.reminder_days
            )
            self._save_state(session, row, transition.request)
            for effect in transition.effects:
                assert isinstance(effect, workflow.Remind)
                self._log(
                    session,
                    row.id,
                    "reminder-sent",
                    actor=None,
                    contact_id=effect.contact.id,
                    detail=f"reminder {effect.number}",
                )
            self._carry_out(session, transition.request, transition.effects, None)
            return len(transition.effects)

    # -- opening a request --------------------------------------------------------

    def _open_by_mail(self, session: Session, message: Inbound, command: commands.Command) -> str:
        change = commands.parse_change(command, message.new_text)
        service_row = store.service_row(session, change.service, for_update=True)
        if service_row is None:
            raise UnknownService("", service=change.service)
        assert service_row.id is not None
        service = store.service(session, service_row)
        requester_contact = store.contact_by_email(session, message.sender)
        is_operator = self.settings.is_operator(message.sender)
        if requester_contact is None and not is_operator:
            raise NotAuthorized("", service=service.name)
        requester = (
            store.party(requester_contact)
            if requester_contact is not None
            else Party(
                email=message.sender,
                name=message.sender_name,
                language=self.settings.bot.language,
            )
        )
        wanted = {
            role: self._contact_for(session, target, role) for role, target in change.wanted.items()
        }
        now = self.clock.now()
        transition = workflow.open_request(
            request_id=self._new_request_id(session),
            service=service,
            requester=requester,
            requester_is_operator=is_operator,
            wanted=wanted,
            pending_roles=store.pending_roles(session, service_row.id),
            now=now,
            ttl=timedelta(days=self.settings.policy.request_ttl_days),
        )
        request = transition.request
        self._save_new_request(session, request, service_row.id)
        self._log(
            session,
            request.id,
            "request-opened",
            actor=message.sender,
            inbound_id=message.id,
            detail=_changes_detail(request),
        )
        self._carry_out(session, request, transition.effects, message)
        return f"request {request.id} opened for {service.name}"

    def _contact_for(self, session: Session, target: str, role: Role) -> Party:
        """The contact a role line names: a known handle or address, or a new address."""
        if "@" in target:
            email = normalise_email(target)
            if email is None:
                raise UnknownContact("", contact=target[:100], role=role.value)
            contact = store.contact_by_email(session, email)
            if contact is None:
                now = self.clock.now()
                contact = Contact(
                    email=email, language=self.settings.bot.language, created_at=now, updated_at=now
                )
                session.add(contact)
                session.flush()
            return store.party(contact)
        contact = store.contact_by_handle(session, target)
        if contact is None:
            raise UnknownContact("", contact=target[:100], role=role.value)
        return store.party(contact)

    def _new_request_id(self, session: Session) -> str:
        while True:
            candidate = f"CR-{tokens.new_key(8)}"
            if store.request_row(session, candidate) is None:
                return candidate

    def _save_new_request(self, session: Session, request: Request, service_id: int) -> None:
        session.add(
            ChangeRequest(
                id=request.id,
                service_id=service_id,
                requester_email=request.requester.email,
                requester_id=request.requester.id,
                created_at=request.created_at,
                expires_at=request.expires_at,
            )
        )
        session.flush()
        for change in request.changes:
            assert change.outgoing.id is not None
            assert change.incoming.id is not None
            session.add(
                RoleChangeRow(
                    request_id=request.id,
                    role=change.role.value,
                    from_contact_id=change.outgoing.id,
                    to_contact_id=change.incoming.id,
                )
            )
        first_reminder = workflow.next_reminder_at(
            request.created_at, 0, self.settings.policy.reminder_days
        )
        for validation in request.validations:
            assert validation.contact.id is not None
            session.add(
                ValidationRow(
                    request_id=request.id,
                    contact_id=validation.contact.id,
                    side=validation.side.value,
                    created_at=request.created_at,
                    next_reminder_at=first_reminder,
                )
            )
        session.flush()

    # -- decisions ----------------------------------------------------------------

    def _decide_by_mail(self, session: Session, message: Inbound, command: commands.Command) -> str:
        decision = commands.decision_of(command)
        validation = self._validation_for(session, message, command.argument)
        request = self._decide(
            session, validation, decision, Channel.EMAIL, actor=message.sender, message=message
        )
        return f"{decision.value} recorded on {request.id}; request is {request.status.value}"

    def _validation_for(self, session: Session, message: Inbound, argument: str) -> ValidationRow:
        """The validation a mail speaks for: by typed token, reply address, thread,
        or, failing those, the token of our own mail quoted below the answer.

        A token is a credential on its own, typed or quoted. A reply without one
        is matched by the address or thread of our mail, and must come from the
        contact. Tokens of two different validations in one mail are ambiguous.
        """
        typed = [argument] if tokens.looks_like_token_attempt(argument) else []
        if typed or message.tokens:
            return self._validation_by_tokens(session, [*typed, *message.tokens], message.sender)
        row = self._validation_by_reply(session, message)
        if row is None and message.quoted_tokens:
            return self._validation_by_tokens(session, list(message.quoted_tokens), message.sender)
        if row is None:
            raise BadToken("no token and not a reply to a validation email")
        contact = session.get(Contact, row.contact_id)
        assert contact is not None
        if contact.email != message.sender:
            raise NotAuthorized(
                "reply from the address the validation email was sent to, or include the token",
                request=row.request_id,
            )
        return row

    def _validation_by_tokens(
        self, session: Session, typed: list[str], actor: str
    ) -> ValidationRow:
        since = self.clock.now() - timedelta(hours=1)
        if store.recent_events(session, "error:bad-token", actor, since) >= (
            self.settings.policy.max_bad_tokens_per_hour
        ):
            raise TooManyAttempts("")
        found: dict[int | None, ValidationRow] = {}
        last_error = BadToken("")
        for candidate in typed:  # what looks like a token may be words that do not match
            try:
                row = self._validation_by_token_only(session, candidate)
            except BadToken as error:
                last_error = error
                continue
            found[row.id] = row
        if not found:
            raise last_error
        if len(found) > 1:
            raise AmbiguousDecision("tokens of several validations in one mail")
        return next(iter(found.values()))

    def _validation_by_reply(self, session: Session, message: Inbound) -> ValidationRow | None:
        for recipient in message.recipients:
            key = mailparse.plus_key(recipient, self.settings.bot.local_part)
            normalised = tokens.normalise_key(key) if key else None
            if (
                normalised
                and (found := store.token_by_reply_key(session, tokens.digest(normalised)))
                and found.used_at is None
            ):
                return session.get(ValidationRow, found.validation_id)
        sent = store.sent_mail(session, message.references)
        if sent is None:
            return None
        if sent.validation_id is not None:
            return session.get(ValidationRow, sent.validation_id)
        contact = store.contact_by_email(session, message.sender)
        if sent.request_id is None or contact is None:
            return None
        rows = store.validation_rows(session, sent.request_id)
        return next((v for v in rows if v.contact_id == contact.id), None)

    def _decide(
        self,
        session: Session,
        validation: ValidationRow,
        decision: Decision,
        channel: Channel,
        *,
        actor: str,
        message: Inbound | None = None,
    ) -> Request:
        request_row = store.request_row(session, validation.request_id, for_update=True)
        assert request_row is not None
        session.refresh(validation)
        contact = session.get(Contact, validation.contact_id)
        assert contact is not None
        now = self.clock.now()
        transition = workflow.decide(
            store.request(session, request_row),
            contact=store.party(contact),
            decision=decision,
            channel=channel,
            now=now,
            actor=actor,
        )
        request = transition.request
        decided = request.validation_of(store.party(contact))
        assert decided is not None
        self._save_state(session, request_row, request)
        self._log(
            session,
            request.id,
            f"validation-{decided.status.value}",
            detail=f"forwarded by {message.via}" if message and message.via else "",
            actor=actor,
            contact_id=contact.id,
            channel=channel.value,
            inbound_id=message.id if message else None,
        )
        if not request.pending:
            self._log(
                session,
                request.id,
                f"request-{request.status.value}",
                actor=actor,
                inbound_id=message.id if message else None,
            )
        self._carry_out(session, request, transition.effects, message)
        return request

    def _save_state(self, session: Session, row: ChangeRequest, request: Request) -> None:
        """Write a transition's new state back: request status and each validation."""
        row.status = request.status.value
        row.closed_at = request.closed_at
        contacts = {v.contact.id: v for v in request.validations}
        days = self.settings.policy.reminder_days
        for stored in store.validation_rows(session, row.id):
            state = contacts[stored.contact_id]
            stored.status = state.status.value
            stored.channel = state.channel.value if state.channel else None
            stored.decided_at = state.decided_at
            stored.actor_email = state.actor
            stored.reminders_sent = state.reminders_sent
            stored.next_reminder_at = (
                workflow.next_reminder_at(request.created_at, state.reminders_sent, days)
                if request.pending and state.pending
                else None
            )

    def token_page(self, typed: str) -> TokenPage:
        """What a token's link shows; reads only (mail scanners open every link)."""
        with transaction(self.engine) as session:
            validation = self._validation_by_token_only(session, typed)
            contact = session.get(Contact, validation.contact_id)
            request_row = store.request_row(session, validation.request_id)
            assert contact is not None
            assert request_row is not None
            request = store.request(session, request_row)
        own = request.validation_of(store.party(contact))
        assert own is not None
        return TokenPage(request, own)

    def _validation_by_token_only(self, session: Session, typed: str) -> ValidationRow:
        token = tokens.normalise(typed)
        found = store.token_by_digest(session, tokens.digest(token)) if token else None
        if found is None:
            raise BadToken("")
        validation = session.get(ValidationRow, found.validation_id)
        assert validation is not None
        if found.used_at is not None and validation.status == "pending":
            raise BadToken("this token was replaced by a newer one: use the latest email")
        return validation

    def decide_with_token(
        self, typed: str, decision: Decision, channel: Channel, *, actor: str | None = None
    ) -> Request:
        """A decision carried by a token alone (the link page)."""
        with transaction(self.engine) as session:
            validation = self._validation_by_token_only(session, typed)
            contact = session.get(Contact, validation.contact_id)
            assert contact is not None
            return self._decide(
                session, validation, decision, channel, actor=actor or contact.email
            )

    # -- effects ------------------------------------------------------------------

    def _carry_out(
        self,
        session: Session,
        request: Request,
        effects: tuple[workflow.Effect, ...],
        message: Inbound | None,
    ) -> None:
        for effect in effects:
            if isinstance(effect, workflow.ApplyHolders):
                self._apply_holders(session, effect)
            elif isinstance(effect, workflow.AskToValidate):
                if effect.replace:
                    self._revoke_tokens(session, request, effect.contact)
                self._send_token(session, request, effect.contact, message)
            elif isinstance(effect, workflow.Remind):
                self._send_token(session, request, effect.contact, message, effect.number)
            else:
                for party in effect.recipients:
                    mail = Outgoing(effect.event, party, request, context=dict(effect.about))
                    self.mailer.queue(session, mail, message)

    def _apply_holders(self, session: Session, effect: workflow.ApplyHolders) -> None:
        row = store.service_row(session, effect.service, for_update=True)
        assert row is not None
        for role, holder in effect.holders.items():
            assert holder.id is not None
            setattr(row, f"{role.value}_id", holder.id)
        row.updated_at = self.clock.now()

    def _validation_row(self, session: Session, request: Request, contact: Party) -> ValidationRow:
        return next(
            v for v in store.validation_rows(session, request.id) if v.contact_id == contact.id
        )

    def _revoke_tokens(self, session: Session, request: Request, contact: Party) -> None:
        validation = self._validation_row(session, request, contact)
        assert validation.id is not None
        for token in store.live_tokens(session, validation.id):
            token.used_at = self.clock.now()

    def _send_token(
        self,
        session: Session,
        request: Request,
        contact: Party,
        message: Inbound | None,
        reminder: int | None = None,
    ) -> None:
        """A fresh token for the contact, in a validation mail or a reminder."""
        validation = self._validation_row(session, request, contact)
        assert validation.id is not None
        token, reply_key = tokens.new_token(), tokens.new_key()
        session.add(
            ValidationToken(
                validation_id=validation.id,
                digest=tokens.digest(token),
                reply_key_digest=tokens.digest(reply_key),
                issued_at=self.clock.now(),
            )
        )
        bot = self.settings.bot
        reply_address = f"{bot.local_part}+{reply_key.lower()}@{bot.domain}"
        side = request.validation_of(contact)
        self.mailer.queue(
            session,
            Outgoing(
                "validation-requested" if reminder is None else "reminder",
                contact,
                request,
                context={
                    "token": tokens.group(token),
                    "link": f"{bot.base_url}/v/{token}",
                    "reply_address": reply_address,
                    "side": side.side.value if side else "new",
                    "reminder_number": reminder,
                },
                validation_id=validation.id,
                reply_to=reply_address,
                carries_secret=True,
            ),
            message,
        )

    def _reject(
        self,
        session: Session,
        message: Inbound,
        error: MailbotError,
        command: commands.Command | None,
    ) -> bool:
        """Answer a command that failed with an error mail, and log it.

        Returns False when the address had its share of answers this hour: the
        error is recorded, and nothing is sent (a loop or a flood ends here).
        """
        contact = store.contact_by_email(session, message.sender)
        language = (
            contact.language
            if contact is not None
            else "fr"
            if command is not None and command.french
            else self.settings.bot.language
        )
        to = Party(email=message.sender, name=contact.name if contact else "", language=language)
        self._log(
            session,
            error.context.get("request"),
            f"error:{error.code}",
            actor=message.sender,
            inbound_id=message.id,
            detail=error.detail,
        )
        if self.mailer.answers_exhausted(session, message.sender):
            return False
        self.mailer.queue(
            session,
            Outgoing(
                "error",
                to,
                context={
                    "error": error,
                    "command": command.line if command else "",
                    "original_subject": message.subject[:200],
                },
                error_code=error.code,
            ),
            message,
        )
        return True

    def _log(
        self,
        session: Session,
        request_id: str | None,
        kind: str,
        *,
        actor: str | None = None,
        contact_id: int | None = None,
        channel: str | None = None,
        inbound_id: int | None = None,
        detail: str = "",
    ) -> None:
        if request_id is not None and store.request_row(session, request_id) is None:
            request_id = None
        session.add(
            EventRow(
                at=self.clock.now(),
                request_id=request_id,
                kind=kind,
                actor_email=actor,
                contact_id=contact_id,
                channel=channel,
                inbound_id=inbound_id,
                detail=detail,
            )
        )

    # -- outbox -------------------------------------------------------------------

    def flush_outbox(self, transport: Transport) -> FlushReport:
        return flush(self.engine, transport, self.clock.now(), self.settings.outgoing.max_attempts)


def _changes_detail(request: Request) -> str:
    return json.dumps(
        [
            {"role": c.role.value, "from": c.outgoing.email, "to": c.incoming.email}
            for c in request.changes
        ]
    )
