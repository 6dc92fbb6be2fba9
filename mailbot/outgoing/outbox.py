"""The outbox: mails queued in the same transaction as the change that caused them,
then drained by a sender with retries, backoff and a dead state.

Each mail is sent once, even when a sender is killed mid-way. A row is
claimed with a short lease (``LEASE``) before sending. The transport hands
the relay everything but the last step that makes it take responsibility
(the SMTP envelope, DATA and the whole body, but not the final dot; the
Maildir file written and synced under ``tmp/``, but not renamed into
``new/``), then calls ``commit_point`` with that last step: the row is marked
sent (and a secret body scrubbed) in a commit of its own, and the step is
taken right behind the commit (``mailbot.storage.handover``). Should the
relay refuse the mail, or the connection break, the row is put back as it
was (its body written back) and retried or made dead as any failed mail, in
another commit.

A sender killed before that commit leaves the relay a session without its
final dot, which every relay discards: the row is sent again once its lease
runs out. A sender killed after the final dot leaves a row marked sent:
nothing is sent again. The one window left is between the commit becoming
irrevocable and the write of the final dot: on PostgreSQL, the two writes
of the ``COMMIT`` and of the dot, back to back; on SQLite, the commit's
write to the log and the dot, with no wait for the disk between them. A kill
there loses that mail, it never doubles it. A send that outlasts its lease
(a relay stalling for more than ``LEASE - SEND_BUDGET``) is harmless too: of
the two senders then holding the row, the first to reach its commit point
sends the mail, and the other finds the row no longer its own and abandons
its session before the final dot. A process that dies holding claims holds
them at most ``LEASE``; any sender then takes them.

A mail that fails temporarily is retried with exponential backoff, capped and
jittered, for the queue lifetime (days, as an MTA's queue); an address that
can never be sent, or a permanent refusal, makes that one row dead at once,
with its reason, and the others go on.
"""

from __future__ import annotations

import logging
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Protocol

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session

from mailbot import metrics
from mailbot.domain import Delivery, OutboxStatus
from mailbot.errors import NotRetryable
from mailbot.storage import mail_queries
from mailbot.storage.engine import transaction, writing
from mailbot.storage.handover import commit_then
from mailbot.storage.tables import OutboxRow, ValidationRow

log = logging.getLogger(__name__)

LEASE = timedelta(seconds=50)
"""How long a claim holds a row: a sender that died is replaced within this."""
SEND_BUDGET = timedelta(seconds=30)
"""No send starts later than ``LEASE - SEND_BUDGET`` after its claim; the rest
of a batch is claimed afresh, so no lease runs out under a live sender."""
BATCH = 20
FIRST_BACKOFF_SECONDS = 30


class TemporaryFailure(Exception):
    """The mail may go through later (a 4xx, a refused connection, a full disk)."""


class PermanentFailure(Exception):
    """The mail will never go through as it is (a 5xx, an address that cannot be sent)."""


class _SentElsewhere(Exception):
    """Another sender marked this mail sent while this one held an expired lease."""


CommitPoint = Callable[[Callable[[], None]], None]
"""Marks the mail sent, then takes the step given (see ``Transport``)."""


class Transport(Protocol):
    """Sends one mail, raising TemporaryFailure or PermanentFailure. A transport
    that keeps a session open between mails also has ``close()``, which each
    flush calls when it is done.

    ``commit_point`` is called once, after everything but the step that makes
    the mail delivered (the final dot, the rename into ``new/``), with that
    step, which it takes right behind the commit marking the mail sent (and
    not at all if that commit cannot be made: the mail is then abandoned
    undelivered). A transport that finds the mail already delivered may
    return without calling it.
    """

    def send(
        self,
        envelope_from: str,
        recipient: str,
        payload: bytes,
        commit_point: CommitPoint,
    ) -> None: ...


class Attempt(StrEnum):
    """What came of one try at sending a mail."""

    SENT = "sent"
    RETRY = "retry"
    DEAD = "dead"


@dataclass(frozen=True)
class FlushReport:
    sent: int = 0
    retried: int = 0
    dead: int = 0


@dataclass(frozen=True)
class RetryPolicy:
    """When to try again and when to give up (``[outgoing]`` settings)."""

    lifetime: timedelta = timedelta(days=5)
    max_backoff: timedelta = timedelta(hours=1)
    max_attempts: int | None = None


def backoff(
    attempts: int, rng: random.Random | None = None, cap: timedelta = timedelta(hours=1)
) -> timedelta:
    """Exponential from 30 s, capped, minus up to 25% jitter so that mails that
    failed together do not all come back at the same instant (never above ``cap``)."""
    ceiling = cap.total_seconds()
    base = min(FIRST_BACKOFF_SECONDS * 2 ** min(max(attempts - 1, 0), 32), ceiling)
    return timedelta(seconds=base * (rng or random).uniform(0.75, 1.0))


def address_problem(address: str) -> str | None:
    """Why an address can never be sent to, or None. Non-ASCII is the transport's
    question (SMTPUTF8); control characters and broken syntax are everyone's."""
    if any(ord(ch) < 0x20 or ch == "\x7f" for ch in address):
        return "control character in the address"
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        return "not an address (local@domain)"
    if any(ch.isspace() or ch in '<>()[],;\\"' for ch in address):
        return "invalid character in the address"
    if domain.startswith((".", "-")) or ".." in domain or domain.endswith(("-", ".")):
        return "invalid domain in the address"
    if len(address) > 254 or len(local) > 64:
        return "address too long"
    return None


Render = Callable[[OutboxRow], tuple[str, bytes]]
"""Makes the subject and bytes of a mail queued as an intent."""


@dataclass(frozen=True)
class _Claim:
    id: int
    envelope_from: str
    recipient: str
    payload: bytes
    event: str
    request_id: str | None


def flush(
    engine: Engine,
    transport: Transport,
    clock: Callable[[], datetime],
    policy: RetryPolicy,
    limit: int = 10_000,
    keep_going: Callable[[], bool] = lambda: True,
    render: Render | None = None,
) -> FlushReport:
    """Send every due mail once; return what happened. ``keep_going`` is asked
    before each mail: once it says no, the mail in flight finishes and the
    claims not yet sent are released for the next flush. ``render`` makes the
    bytes of mail queued as an intent (``Mailer.render_queued``); without it
    such mail waits for a sender that has it."""
    counts = dict.fromkeys(Attempt, 0)
    try:
        while limit > 0 and keep_going():
            claims = _claim(engine, clock(), min(BATCH, limit), render)
            if not claims:
                break
            limit -= len(claims)
            claimed = time.monotonic()
            for index, claim in enumerate(claims):
                late = time.monotonic() - claimed > (LEASE - SEND_BUDGET).total_seconds()
                if late or not keep_going():
                    _release(engine, [c.id for c in claims[index:]], clock())
                    break
                counts[_send_one(engine, transport, claim, clock, policy)] += 1
    finally:
        close = getattr(transport, "close", None)
        if callable(close):
            close()
    return FlushReport(counts[Attempt.SENT], counts[Attempt.RETRY], counts[Attempt.DEAD])


def _claim(engine: Engine, now: datetime, limit: int, render: Render | None = None) -> list[_Claim]:
    """Claim due mail for ``LEASE``; mail queued as an intent is rendered first,
    once: its bytes are kept in the row, so every attempt sends the same mail."""
    with transaction(engine) as session:
        claims = []
        for row in mail_queries.due_outbox(session, now, limit):
            assert row.id is not None
            unrendered = row.payload is None and row.intent is not None
            if unrendered and (render is None or not _render(session, row, render, now)):
                continue
            row.status = OutboxStatus.SENDING
            row.attempts += 1
            row.next_attempt_at = now + LEASE
            if row.payload is None:  # sent just before a crash, and already scrubbed
                row.status = OutboxStatus.SENT
                continue
            claims.append(
                _Claim(
                    row.id,
                    row.envelope_from,
                    row.to_email,
                    row.payload,
                    row.event,
                    row.request_id,
                )
            )
        return claims


def _render(session: Session, row: OutboxRow, render: Render, now: datetime) -> bool:
    """Make the bytes of a mail queued as an intent; the intent goes, the bytes
    stay (and are dropped once sent, when they carry a secret). A mail whose
    templates cannot render it is dead at once, its intent kept for a retry
    once they are fixed."""
    try:
        row.subject, row.payload = render(row)
    except Exception as exc:  # a broken or missing operator template, a corrupt intent
        row.status = OutboxStatus.DEAD
        row.last_error = f"cannot render: {type(exc).__name__}: {exc}"[:1000]
        row.next_attempt_at = now
        _set_delivery(session, row, Delivery.FAILED)
        log.error("cannot render %s to %s: %s", row.event, row.to_email, exc)
        metrics.outgoing(row.event, "dead")
        return False
    row.intent = None
    return True


def _release(engine: Engine, ids: list[int], now: datetime) -> None:
    """Hand back claims that were not tried: due at once, the attempt not counted."""
    with transaction(engine) as session:
        for row in mail_queries.outbox_rows(session, ids):
            if row.status == OutboxStatus.SENDING:
                row.status = OutboxStatus.QUEUED
                row.attempts = max(row.attempts - 1, 0)
                row.next_attempt_at = now


@dataclass
class _Progress:
    """How far one mail got: marked sent (the commit under way), handed over
    (the relay given its final dot), recorded (the commit known to be made)."""

    marked: bool = False
    handed_over: bool = False
    recorded: bool = False


def _send_one(
    engine: Engine,
    transport: Transport,
    claim: _Claim,
    clock: Callable[[], datetime],
    policy: RetryPolicy,
) -> Attempt:
    """Try one mail; whatever happens, its row leaves ``sending`` in a commit of its
    own: marked sent at the transport's commit point, put back if the relay then
    refuses it."""
    problem = address_problem(claim.recipient) or address_problem(claim.envelope_from)
    progress = _Progress()

    def commit_point(hand_over: Callable[[], None]) -> None:
        def then() -> None:
            progress.marked = True
            hand_over()
            progress.handed_over = True

        _mark_sent(engine, claim.id, clock(), then)
        progress.recorded = True

    try:
        if problem:
            raise PermanentFailure(f"cannot send to {claim.recipient!r}: {problem}")
        transport.send(claim.envelope_from, claim.recipient, claim.payload, commit_point)
    except _SentElsewhere:
        return Attempt.SENT  # abandoned before the relay took it: sent once, by the other
    except Exception as exc:
        if progress.handed_over and not progress.recorded:
            return _handed_over_unrecorded(engine, claim, clock(), exc)
        permanent, error = _classified(exc)
        undo = progress.marked
        return _failed(engine, claim, error, clock(), policy, permanent=permanent, undo=undo)
    if not progress.recorded:  # a transport that found the mail already delivered
        commit_point(lambda: None)
    _log_sent(claim)
    return Attempt.SENT


def _classified(exc: Exception) -> tuple[bool, str]:
    """Whether a failed attempt is for good, and what to say of it."""
    if isinstance(exc, PermanentFailure):
        return True, str(exc)
    if isinstance(exc, (UnicodeError, ValueError)):  # the bytes or an address cannot be sent
        return True, f"cannot send: {type(exc).__name__}: {exc}"
    if isinstance(exc, TemporaryFailure):
        return False, str(exc)
    return False, f"{type(exc).__name__}: {exc}"  # OSError, a transport's own surprise


def _handed_over_unrecorded(
    engine: Engine, claim: _Claim, now: datetime, exc: Exception
) -> Attempt:
    """The relay was given the final dot but the commit marking the mail sent
    failed (the database lost mid-commit): marked again in a commit of its own,
    since sending it again would send it twice. Should that fail too, the row
    keeps its lease and is sent again once it runs out."""
    try:
        _mark_sent(engine, claim.id, now, lambda: None)
    except _SentElsewhere:
        pass  # the first commit was made after all
    except Exception as again:
        log.error(
            "handed %s to %s to the relay but cannot mark it sent (%s; then %s): "
            "it will be sent again once its claim runs out",
            claim.event,
            claim.recipient,
            exc,
            again,
        )
        return Attempt.RETRY
    _log_sent(claim)
    return Attempt.SENT


SWITCH_INTERVAL_SECONDS = 0.0005


def hand_over_promptly() -> None:
    """Let a thread back into the interpreter within half a millisecond (not
    Python's 5 ms) when other threads keep it busy: a sender between the
    commit point's commit and the final dot must get on at once, since a
    process killed in between leaves a mail marked sent that the relay never
    took. Called by the processes that send (``serve``, ``mailbot worker``)."""
    sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)


def _mark_sent(engine: Engine, row_id: int, now: datetime, then: Callable[[], None]) -> None:
    """The commit point: from here on no sender sends this mail again; ``then``
    (the final dot) is taken right behind the commit (``commit_then``).

    One conditional UPDATE per table, on a bare connection: the commit every
    mail waits for just before its final dot, so kept to two statements.
    """
    outbox, validation = OutboxRow.__table__, ValidationRow.__table__  # type: ignore[attr-defined]
    with writing(engine, synced=False) as connection:
        marked = connection.execute(
            sa.update(outbox)
            .where(outbox.c.id == row_id, outbox.c.status == OutboxStatus.SENDING)
            .values(
                status=OutboxStatus.SENT,
                sent_at=now,
                last_error=None,
                payload=sa.case((outbox.c.carries_secret, sa.null()), else_=outbox.c.payload),
            )
            .returning(outbox.c.validation_id)
        ).first()
        if marked is None:
            raise _SentElsewhere
        if marked.validation_id is not None:
            connection.execute(
                sa.update(validation)
                .where(
                    validation.c.id == marked.validation_id,
                    validation.c.delivery != Delivery.FAILED,
                )
                .values(delivery=Delivery.SENT)
            )
        commit_then(connection, then)


def _log_sent(claim: _Claim) -> None:
    """Counted and logged once the relay took the mail, not at the commit point."""
    metrics.outgoing(claim.event, "sent")
    log.info(
        "sent %s to %s (request %s)",
        claim.event,
        claim.recipient,
        claim.request_id or "-",
        extra={"request_id": claim.request_id, "event": claim.event, "outcome": "sent"},
    )


def _failed(
    engine: Engine,
    claim: _Claim,
    error: str,
    now: datetime,
    policy: RetryPolicy,
    *,
    permanent: bool,
    undo: bool,
) -> Attempt:
    """Retry later or give up; a row already marked sent at the commit point (``undo``)
    is put back first: its body written back, no longer sent."""
    with transaction(engine) as session:
        row = session.get(OutboxRow, claim.id, with_for_update=True)
        assert row is not None
        if row.status == OutboxStatus.SENT and not undo:
            return Attempt.SENT  # another sender, whose lease this one outlived, sent it
        if undo:
            row.payload = claim.payload
            row.sent_at = None
            _set_delivery(session, row, Delivery.QUEUED)
        row.last_error = error[:1000]
        give_up_at = (row.queued_at or row.created_at) + policy.lifetime
        worn_out = policy.max_attempts is not None and row.attempts >= policy.max_attempts
        dead = permanent or worn_out or now >= give_up_at
        if dead:
            row.status = OutboxStatus.DEAD
            _set_delivery(session, row, Delivery.FAILED)
        else:
            row.status = OutboxStatus.QUEUED
            wait = backoff(row.attempts, cap=policy.max_backoff)
            row.next_attempt_at = min(now + wait, give_up_at)
        log.warning(
            "%s %s to %s (attempt %d): %s",
            "gave up on" if dead else "will retry",
            row.event,
            row.to_email,
            row.attempts,
            error,
            extra={
                "request_id": row.request_id,
                "event": row.event,
                "outcome": "dead" if dead else "retry",
            },
        )
    metrics.outgoing(row.event, "dead" if dead else "retry")
    return Attempt.DEAD if dead else Attempt.RETRY


def _set_delivery(session: Session, row: OutboxRow, delivery: Delivery) -> None:
    if row.validation_id is None:
        return
    validation = session.get(ValidationRow, row.validation_id)
    if validation is not None and validation.delivery != Delivery.FAILED:
        validation.delivery = delivery


def requeue(engine: Engine, ids: list[int] | None, now: datetime) -> list[OutboxRow]:
    """Queue dead mail again (``ids``, or every dead row when None) for a fresh
    queue lifetime, due now; returns the rows requeued."""
    with transaction(engine) as session:
        rows = (
            mail_queries.dead_outbox(session)
            if ids is None
            else mail_queries.outbox_rows(session, ids)
        )
        if ids is not None:
            _check_dead(ids, rows)
        requeued = [row for row in rows if row.status == OutboxStatus.DEAD]
        for row in requeued:
            row.status = OutboxStatus.QUEUED
            row.attempts = 0
            row.queued_at = now
            row.next_attempt_at = now
            validation = session.get(ValidationRow, row.validation_id or 0)
            if validation is not None and validation.delivery == Delivery.FAILED:
                validation.delivery = Delivery.QUEUED
        return requeued


def _check_dead(ids: list[int], rows: list[OutboxRow]) -> None:
    """Mail named for a retry must exist and be dead; nothing is requeued otherwise."""
    found = {row.id: row for row in rows}
    for row_id in ids:
        if row_id not in found:
            raise NotRetryable(f"no mail {row_id} in the outbox")
        if found[row_id].status != OutboxStatus.DEAD:
            raise NotRetryable(f"mail {row_id} is {found[row_id].status}, not dead")


def hurry(engine: Engine, now: datetime) -> int:
    """Make every mail waiting in backoff due now; returns how many."""
    with transaction(engine) as session:
        waiting = mail_queries.waiting_outbox(session, now)
        for row in waiting:
            row.next_attempt_at = now
        return len(waiting)
