"""Draining the outbox: sent once, retried with backoff, dead after N attempts,
secrets scrubbed once sent, and nothing lost when a sender dies mid-way."""

from __future__ import annotations

import random
import threading
from datetime import timedelta
from pathlib import Path

import pytest
from factories import ALICE, CAROL, MailFactory, maildir_messages
from sqlmodel import select

from mailbot.adapters.maildir_out import MaildirTransport
from mailbot.clock import FixedClock
from mailbot.db import transaction
from mailbot.models import OutboxRow, ValidationRow
from mailbot.outbox import LEASE, TemporaryFailure, backoff
from mailbot.service import Mailbot

pytestmark = pytest.mark.usefixtures("world")


class FlakyTransport:
    """Fails the first ``failures`` sends, then delivers into a list."""

    def __init__(self, failures: int = 0, error: Exception | None = None) -> None:
        self.failures = failures
        self.error = error or TemporaryFailure("451 try later")
        self.delivered: list[tuple[str, str, bytes]] = []

    def send(self, envelope_from: str, recipient: str, payload: bytes) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise self.error
        self.delivered.append((envelope_from, recipient, payload))


def rows(bot: Mailbot) -> list[OutboxRow]:
    with transaction(bot.engine) as session:
        return list(session.exec(select(OutboxRow).order_by(OutboxRow.id)).all())  # type: ignore[arg-type]


def open_request(bot: Mailbot, mail: MailFactory) -> None:
    bot.receive(mail(ALICE, "CHANGE example.com", f"tech: {CAROL}"))


def test_flush_writes_each_mail_once_into_the_maildir(
    bot: Mailbot, mail: MailFactory, tmp_path: Path
) -> None:
    open_request(bot, mail)
    transport = MaildirTransport(tmp_path / "sent")
    assert bot.flush_outbox(transport).sent == 3
    assert bot.flush_outbox(transport).sent == 0
    messages = maildir_messages(tmp_path / "sent")
    assert sorted(m["To"].addresses[0].addr_spec for m in messages) == [ALICE, ALICE, CAROL]
    assert list((tmp_path / "sent" / "tmp").iterdir()) == []
    assert {r.status for r in rows(bot)} == {"sent"}


def test_token_mails_lose_their_body_once_sent(bot: Mailbot, mail: MailFactory) -> None:
    open_request(bot, mail)
    bot.flush_outbox(FlakyTransport())
    for row in rows(bot):
        if row.event == "validation-requested":
            assert row.payload is None
            assert row.message_id
            assert row.to_email
            assert row.subject
        else:
            assert row.payload is not None
    with transaction(bot.engine) as session:
        assert {v.delivery for v in session.exec(select(ValidationRow)).all()} == {"sent"}


def test_temporary_failures_are_retried_later_with_backoff(
    bot: Mailbot, mail: MailFactory, clock: FixedClock
) -> None:
    open_request(bot, mail)
    transport = FlakyTransport(failures=3)
    report = bot.flush_outbox(transport)
    assert (report.sent, report.retried) == (0, 3)
    assert bot.flush_outbox(transport).sent == 0  # not due yet
    failed = rows(bot)
    assert all(r.last_error == "451 try later" and r.attempts == 1 for r in failed)
    assert all(r.next_attempt_at > clock.now() for r in failed)
    clock.at += timedelta(hours=3)
    assert bot.flush_outbox(transport).sent == 3
    assert len(transport.delivered) == 3


def test_a_mail_that_keeps_failing_becomes_dead(
    bot: Mailbot, mail: MailFactory, clock: FixedClock
) -> None:
    open_request(bot, mail)
    transport = FlakyTransport(failures=10_000)
    for _ in range(bot.settings.outgoing.max_attempts):
        bot.flush_outbox(transport)
        clock.at += timedelta(days=1)
    assert {r.status for r in rows(bot)} == {"dead"}
    with transaction(bot.engine) as session:
        assert {v.delivery for v in session.exec(select(ValidationRow)).all()} == {"failed"}


def test_a_sender_that_died_after_claiming_loses_nothing(
    bot: Mailbot, mail: MailFactory, clock: FixedClock
) -> None:
    open_request(bot, mail)

    class Crash(BaseException):
        """The process dies after the smarthost took the mail, before it was marked sent."""

    class DiesAfterFirstSend(FlakyTransport):
        def send(self, envelope_from: str, recipient: str, payload: bytes) -> None:
            super().send(envelope_from, recipient, payload)
            if len(self.delivered) == 1:
                raise Crash

    transport = DiesAfterFirstSend()
    with pytest.raises(Crash):
        bot.flush_outbox(transport)
    # Claimed rows wait for their lease to run out, then go (again) with the same Message-ID.
    assert bot.flush_outbox(transport).sent == 0
    clock.at += LEASE + timedelta(seconds=1)
    assert bot.flush_outbox(transport).sent == 3
    message_ids = [
        line
        for _, _, payload in transport.delivered
        for line in payload.splitlines()
        if line.startswith(b"Message-ID:")
    ]
    assert len(message_ids) == 4
    assert len(set(message_ids)) == 3  # one duplicate, recognisable by its Message-ID
    assert {r.status for r in rows(bot)} == {"sent"}


def test_backoff_grows_and_is_bounded() -> None:
    rng = random.Random(7)
    delays = [backoff(n, rng) for n in range(1, 12)]
    assert delays[0] >= timedelta(seconds=30)
    assert delays[3] > delays[0]
    assert max(delays) <= timedelta(hours=2, minutes=30)


def test_two_senders_at_once_send_each_mail_once(bot: Mailbot, mail: MailFactory) -> None:
    """Two ``serve`` instances on one database: claims are row locks (SKIP LOCKED)."""
    for role, who in (("tech", CAROL), ("billing", CAROL)):
        bot.receive(mail(ALICE, "CHANGE example.com", f"{role}: {who}"))
    transport = FlakyTransport()
    barrier = threading.Barrier(2)

    def run() -> None:
        barrier.wait()
        bot.flush_outbox(transport)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ids = [
        line
        for _, _, payload in transport.delivered
        for line in payload.splitlines()
        if line.startswith(b"Message-ID:")
    ]
    assert len(ids) == len(set(ids)) == len(rows(bot)) == 6
