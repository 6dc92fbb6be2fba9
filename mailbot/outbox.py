"""The outbox: mails queued in the same transaction as the change that caused them,
then drained by a sender with retries, backoff and a dead state.

Delivery is at-least-once: a row is claimed with a lease before sending and
marked sent after; if the process dies in between, the lease runs out and the
mail is sent again with the same Message-ID, so a duplicate is recognisable.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from sqlalchemy.engine import Engine
from sqlmodel import Session

from mailbot import store
from mailbot.db import transaction
from mailbot.models import OutboxRow, ValidationRow

log = logging.getLogger(__name__)

LEASE = timedelta(minutes=5)
BATCH = 50


class TemporaryFailure(Exception):
    """The mail may go through later (a 4xx, a refused connection, a full disk)."""


class PermanentFailure(Exception):
    """The mail will never go through as it is (a 5xx from the smarthost)."""


class Transport(Protocol):
    """Sends one mail, raising TemporaryFailure or PermanentFailure. A transport
    that keeps a session open between mails also has ``close()``, which each
    flush calls when it is done."""

    def send(self, envelope_from: str, recipient: str, payload: bytes) -> None: ...


@dataclass(frozen=True)
class FlushReport:
    sent: int = 0
    retried: int = 0
    dead: int = 0


def backoff(attempts: int, rng: random.Random | None = None) -> timedelta:
    """Exponential from 30 s, capped at 2 h, with up to 25% jitter."""
    base = min(30 * 2 ** max(attempts - 1, 0), 7200)
    jitter = (rng or random).uniform(0, base / 4)
    return timedelta(seconds=base + jitter)


@dataclass(frozen=True)
class _Claim:
    id: int
    envelope_from: str
    recipient: str
    payload: bytes
    attempts: int


def flush(
    engine: Engine, transport: Transport, now: datetime, max_attempts: int, limit: int = 10_000
) -> FlushReport:
    """Send every due mail once; return what happened."""
    sent = retried = dead = 0
    try:
        while limit > 0:
            claims = _claim(engine, now, min(BATCH, limit))
            if not claims:
                break
            limit -= len(claims)
            for claim in claims:
                outcome = _send_one(engine, transport, claim, now, max_attempts)
                sent += outcome == "sent"
                retried += outcome == "retry"
                dead += outcome == "dead"
    finally:
        close = getattr(transport, "close", None)
        if callable(close):
            close()
    return FlushReport(sent, retried, dead)


def _claim(engine: Engine, now: datetime, limit: int) -> list[_Claim]:
    with transaction(engine) as session:
        claims = []
        for row in store.due_outbox(session, now, limit):
            assert row.id is not None
            row.status = "sending"
            row.attempts += 1
            row.next_attempt_at = now + LEASE
            if row.payload is None:  # sent just before a crash, and already scrubbed
                row.status = "sent"
                continue
            claims.append(
                _Claim(row.id, row.envelope_from, row.to_email, row.payload, row.attempts)
            )
        return claims


def _send_one(
    engine: Engine, transport: Transport, claim: _Claim, now: datetime, max_attempts: int
) -> str:
    try:
        transport.send(claim.envelope_from, claim.recipient, claim.payload)
    except PermanentFailure as exc:
        _failed(engine, claim.id, str(exc), now, dead=True)
        return "dead"
    except (TemporaryFailure, OSError) as exc:
        dead = claim.attempts >= max_attempts
        _failed(engine, claim.id, str(exc) or type(exc).__name__, now, dead=dead)
        return "dead" if dead else "retry"
    _sent(engine, claim.id, now)
    return "sent"


def _sent(engine: Engine, row_id: int, now: datetime) -> None:
    with transaction(engine) as session:
        row = session.get(OutboxRow, row_id)
        assert row is not None
        row.status = "sent"
        row.sent_at = now
        row.last_error = None
        if row.carries_secret:
            row.payload = None
        _set_delivery(session, row, "sent")
        log.info("sent %s to %s (request %s)", row.event, row.to_email, row.request_id or "-")


def _failed(engine: Engine, row_id: int, error: str, now: datetime, *, dead: bool) -> None:
    with transaction(engine) as session:
        row = session.get(OutboxRow, row_id)
        assert row is not None
        row.last_error = error[:1000]
        if dead:
            row.status = "dead"
            _set_delivery(session, row, "failed")
        else:
            row.status = "queued"
            row.next_attempt_at = now + backoff(row.attempts)
        log.warning(
            "%s %s to %s (attempt %d): %s",
            "gave up on" if dead else "will retry",
            row.event,
            row.to_email,
            row.attempts,
            error,
        )


def _set_delivery(session: Session, row: OutboxRow, delivery: str) -> None:
    if row.validation_id is None:
        return
    validation = session.get(ValidationRow, row.validation_id)
    if validation is not None and validation.delivery != "failed":
        validation.delivery = delivery
