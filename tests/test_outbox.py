"""Draining the outbox: sent once, retried with capped backoff for the queue
lifetime, dead only then (or at once for an address that can never be sent),
secrets scrubbed once sent, nothing lost and nothing written twice when a
sender dies mid-way, and dead mail queued again on demand."""

from __future__ import annotations

import functools
import random
import threading
from datetime import timedelta
from pathlib import Path

import pytest
from conftest import START, make_settings
from factories import ALICE, CAROL, MailFactory, another_instance, maildir_messages
from sqlmodel import select

from mailbot import commands
from mailbot.adapters.maildir_out import MaildirTransport
from mailbot.clock import FixedClock
from mailbot.domain import Party
from mailbot.outgoing.mailer import OutgoingMail
from mailbot.outgoing.outbox import CommitPoint, PermanentFailure, TemporaryFailure, backoff
from mailbot.service import Mailbot
from mailbot.storage.engine import reading, transaction
from mailbot.storage.tables import OutboxRow, ValidationRow

pytestmark = pytest.mark.usefixtures("world")


class FlakyTransport:
    """Fails the first ``failures`` sends, then delivers into a list."""

    def __init__(self, failures: int = 0, error: Exception | None = None) -> None:
        self.failures = failures
        self.error = error or TemporaryFailure("451 try later")
        self.delivered: list[tuple[str, str, bytes]] = []

    def send(
        self,
        envelope_from: str,
        recipient: str,
        payload: bytes,
        commit_point: CommitPoint,
    ) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise self.error
        commit_point(functools.partial(self.delivered.append, (envelope_from, recipient, payload)))


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


def test_a_sender_woken_by_queued_mail_finds_it_committed(bot: Mailbot, mail: MailFactory) -> None:
    """``on_mail_queued`` wakes the sender once the mail is committed, not at the
    savepoint each command runs in: a sender woken there found nothing, and the
    mail waited for its next round."""
    visible: list[int] = []

    def woken() -> None:
        with reading(bot.engine) as session:  # another connection, as a sender's
            visible.append(len(session.exec(select(OutboxRow)).all()))

    bot.on_mail_queued.append(woken)
    open_request(bot, mail)
    assert visible == [3]
    bot.receive(mail(CAROL, "STATUS", ""))
    assert visible == [3, 4]


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


def retry_until_settled(bot: Mailbot, transport: FlakyTransport, clock: FixedClock) -> list[float]:
    """Flush at each mail's next attempt until none is queued; the gaps, in seconds."""
    gaps = []
    while queued := [r for r in rows(bot) if r.status == "queued"]:
        due = min(r.next_attempt_at for r in queued)
        gaps.append((due - clock.now()).total_seconds())
        clock.at = max(clock.at, due)
        bot.flush_outbox(transport)
    return gaps


def test_a_mail_that_keeps_failing_is_retried_for_days_then_dead(
    bot: Mailbot, mail: MailFactory, clock: FixedClock
) -> None:
    open_request(bot, mail)
    bot.flush_outbox(FlakyTransport())
    queue_help(bot, CAROL)
    start = clock.now()
    transport = FlakyTransport(failures=10**9)
    bot.flush_outbox(transport)
    gaps = retry_until_settled(bot, transport, clock)
    lifetime = timedelta(hours=bot.settings.outgoing.queue_lifetime_hours)
    assert lifetime == timedelta(days=5)
    assert clock.now() - start == lifetime  # not a minute earlier, not a retry later
    assert max(gaps) <= 3600  # the backoff is capped at an hour
    (dead,) = [r for r in rows(bot) if r.status != "sent"]
    assert (dead.status, dead.last_error) == ("dead", "451 try later")
    assert dead.attempts > 100


def test_max_attempts_still_gives_up_after_that_many_attempts(
    tmp_path: Path, database_url: str, clock: FixedClock
) -> None:
    settings = make_settings(tmp_path, database_url, outgoing={"max_attempts": 3})
    bot = Mailbot.from_settings(settings, clock)
    try:
        queue_help(bot, CAROL)
        transport = FlakyTransport(failures=10**9)
        bot.flush_outbox(transport)
        retry_until_settled(bot, transport, clock)
        assert [(r.status, r.attempts) for r in rows(bot)] == [("dead", 3)]
        assert clock.now() - START < timedelta(minutes=5)
    finally:
        bot.engine.dispose()


def test_a_relay_back_after_days_gets_the_mail(bot: Mailbot, clock: FixedClock) -> None:
    queue_help(bot, CAROL)
    transport = FlakyTransport(failures=32)  # most of a day of refusals
    bot.flush_outbox(transport)
    retry_until_settled(bot, transport, clock)
    assert [r.status for r in rows(bot)] == ["sent"]
    assert clock.now() - START > timedelta(hours=18)
    assert len(transport.delivered) == 1


class Crash(BaseException):
    """The process dies."""


def message_ids(delivered: list[tuple[str, str, bytes]]) -> list[bytes]:
    return [
        line
        for _, _, payload in delivered
        for line in payload.splitlines()
        if line.startswith(b"Message-ID:")
    ]


def test_a_sender_that_died_before_the_commit_point_loses_nothing(
    bot: Mailbot, mail: MailFactory, clock: FixedClock
) -> None:
    open_request(bot, mail)

    class DiesBeforeCommitting(FlakyTransport):
        def send(
            self,
            envelope_from: str,
            recipient: str,
            payload: bytes,
            commit_point: CommitPoint,
        ) -> None:
            raise Crash  # the relay was handed the mail, never its final dot

    with pytest.raises(Crash):
        bot.flush_outbox(DiesBeforeCommitting())
    # Claimed rows wait for their lease to run out (under a minute), then go.
    transport = FlakyTransport()
    assert bot.flush_outbox(transport).sent == 0
    clock.at += timedelta(seconds=59)
    assert bot.flush_outbox(transport).sent == 3
    assert len(message_ids(transport.delivered)) == len(set(message_ids(transport.delivered))) == 3
    assert {r.status for r in rows(bot)} == {"sent"}


def test_a_sender_that_died_after_the_relay_took_a_mail_does_not_send_it_again(
    bot: Mailbot, mail: MailFactory, clock: FixedClock
) -> None:
    open_request(bot, mail)

    class DiesAfterFirstSend(FlakyTransport):
        def send(
            self,
            envelope_from: str,
            recipient: str,
            payload: bytes,
            commit_point: CommitPoint,
        ) -> None:
            super().send(envelope_from, recipient, payload, commit_point)
            if len(self.delivered) == 1:
                raise Crash  # before the outbox heard the relay's 250

    transport = DiesAfterFirstSend()
    with pytest.raises(Crash):
        bot.flush_outbox(transport)
    clock.at += timedelta(seconds=59)
    assert bot.flush_outbox(transport).sent == 2
    assert len(message_ids(transport.delivered)) == len(set(message_ids(transport.delivered))) == 3
    assert {r.status for r in rows(bot)} == {"sent"}


def test_backoff_grows_is_capped_and_jittered() -> None:
    rng = random.Random(7)
    delays = [backoff(n, rng) for n in range(1, 400)]
    assert timedelta(seconds=20) <= delays[0] <= timedelta(seconds=30)
    assert delays[3] > delays[0]
    assert max(delays) <= timedelta(hours=1)
    assert len(set(delays[20:])) == len(delays[20:])  # capped ones still spread out
    assert min(delays[20:]) >= timedelta(minutes=45)


def test_two_senders_at_once_send_each_mail_once(bot: Mailbot, mail: MailFactory) -> None:
    """Two ``serve`` instances on one database: claims are row locks (SKIP LOCKED)."""
    for role, who in (("tech", CAROL), ("billing", CAROL)):
        bot.receive(mail(ALICE, "CHANGE example.com", f"{role}: {who}"))
    transport = FlakyTransport()
    barrier = threading.Barrier(2)

    def run(instance: Mailbot) -> None:
        barrier.wait()
        instance.flush_outbox(transport)

    with another_instance(bot) as other:
        threads = [threading.Thread(target=run, args=(b,)) for b in (bot, other)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    ids = message_ids(transport.delivered)
    assert len(ids) == len(set(ids)) == len(rows(bot)) == 6


def test_a_mail_written_to_the_maildir_before_a_crash_is_not_written_twice(
    bot: Mailbot, mail: MailFactory, clock: FixedClock, tmp_path: Path
) -> None:
    open_request(bot, mail)
    root = tmp_path / "sent"

    class DiesAfterFirstFile(MaildirTransport):
        def send(
            self,
            envelope_from: str,
            recipient: str,
            payload: bytes,
            commit_point: CommitPoint,
        ) -> None:
            super().send(envelope_from, recipient, payload, commit_point)
            raise Crash  # the file is in place, the row marked sent before it

    with pytest.raises(Crash):
        bot.flush_outbox(DiesAfterFirstFile(root))
    (first,) = (root / "new").iterdir()
    first.rename(root / "cur" / f"{first.name}:2,S")  # a mail reader has seen it since
    clock.at += timedelta(minutes=1)
    assert bot.flush_outbox(MaildirTransport(root)).sent == 2
    files = [*(root / "new").iterdir(), *(root / "cur").iterdir()]
    assert len(files) == 3
    assert {r.status for r in rows(bot)} == {"sent"}


def queue_help(bot: Mailbot, to: str) -> None:
    """Queue a help mail to ``to`` as the service would, whatever the address."""
    with transaction(bot.engine) as session:
        outgoing = OutgoingMail("help", Party(email=to), context={"commands": commands.VERBS})
        bot.mailer.queue(session, outgoing, None)


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("bob\t@example.com", "control character"),
        ("not an address", "local@domain"),
        ("two words@example.com", "invalid character"),
        ("bob@example..com", "invalid domain"),
    ],
)
def test_an_address_that_can_never_be_sent_fails_alone_and_for_good(
    bot: Mailbot, mail: MailFactory, address: str, reason: str
) -> None:
    fails_alone_and_for_good(bot, mail, address, reason)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_nul_in_an_address_fails_that_mail_alone(bot: Mailbot, mail: MailFactory) -> None:
    """Only SQLite can store a NUL (PostgreSQL text cannot, and the strict From
    parser refuses one before any mail is queued); the outbox still copes."""
    fails_alone_and_for_good(bot, mail, "a\x00b@example.com", "control character")


def fails_alone_and_for_good(bot: Mailbot, mail: MailFactory, address: str, reason: str) -> None:
    queue_help(bot, address)
    open_request(bot, mail)
    transport = FlakyTransport()
    report = bot.flush_outbox(transport)
    assert (report.sent, report.dead) == (3, 1)
    (bad,) = [r for r in rows(bot) if r.to_email == address]
    assert bad.status == "dead"
    assert reason in (bad.last_error or "")
    assert all(recipient != address for _, recipient, _ in transport.delivered)


def test_a_transport_that_raises_anything_never_leaves_a_row_sending(
    bot: Mailbot, mail: MailFactory
) -> None:
    open_request(bot, mail)
    report = bot.flush_outbox(
        FlakyTransport(failures=1, error=UnicodeEncodeError("ascii", "é", 0, 1, "x"))
    )
    assert (report.dead, report.sent) == (1, 2)
    report = bot.flush_outbox(FlakyTransport(failures=1, error=RuntimeError("surprise")))
    assert {r.status for r in rows(bot)} == {"sent", "dead"}
    assert "sending" not in {r.status for r in rows(bot)}


def test_a_permanent_refusal_is_dead_at_once_and_can_be_retried(
    bot: Mailbot, mail: MailFactory, clock: FixedClock
) -> None:
    open_request(bot, mail)
    bot.flush_outbox(FlakyTransport(failures=3, error=PermanentFailure("550 no such user")))
    assert {r.status for r in rows(bot)} == {"dead"}
    clock.at += timedelta(days=30)  # long past the queue lifetime of the first try
    requeued = bot.retry_outbox(None)
    assert len(requeued) == 3
    with transaction(bot.engine) as session:
        assert {v.delivery for v in session.exec(select(ValidationRow)).all()} == {"queued"}
    transport = FlakyTransport(failures=3)  # a fresh lifetime: a 4xx is retried again
    assert bot.flush_outbox(transport).retried == 3
    clock.at += timedelta(hours=2)
    assert bot.flush_outbox(transport).sent == 3
    with transaction(bot.engine) as session:
        assert {v.delivery for v in session.exec(select(ValidationRow)).all()} == {"sent"}


def test_flush_all_sends_mail_waiting_in_backoff_now(bot: Mailbot, mail: MailFactory) -> None:
    open_request(bot, mail)
    transport = FlakyTransport(failures=3)
    bot.flush_outbox(transport)
    assert bot.flush_outbox(transport).sent == 0  # waiting out its backoff
    assert bot.hurry_outbox() == 3
    assert bot.flush_outbox(transport).sent == 3


def test_a_stopping_sender_finishes_the_mail_in_flight_and_releases_the_rest(
    bot: Mailbot, mail: MailFactory
) -> None:
    open_request(bot, mail)
    transport = FlakyTransport()
    asked = []

    def keep_going() -> bool:
        asked.append(True)
        return len(asked) <= 2  # a stop arrives while the first mail is being sent

    report = bot.flush_outbox(transport, keep_going)
    assert (report.sent, len(transport.delivered)) == (1, 1)
    assert sorted(r.status for r in rows(bot)) == ["queued", "queued", "sent"]
    assert {r.attempts for r in rows(bot) if r.status == "queued"} == {0}
    assert bot.flush_outbox(transport).sent == 2  # released: due at once


def test_a_mail_its_templates_cannot_render_is_dead_until_they_are_fixed(
    bot: Mailbot, mail: MailFactory, tmp_path: Path
) -> None:
    """Mail is rendered when first sent: a broken operator template kills that mail
    with the reason, the others go, and ``outbox retry`` sends it once fixed."""
    override = tmp_path / "templates" / "mail" / "en" / "validation-requested.txt.j2"
    override.parent.mkdir(parents=True)
    override.write_text("Subject: {{ request.id\n")
    broken_settings = make_settings(
        tmp_path, bot.settings.database.url, bot={"templates_dir": str(tmp_path / "templates")}
    )
    broken = Mailbot.from_settings(broken_settings, bot.clock)
    try:
        open_request(broken, mail)
        transport = FlakyTransport()
        assert broken.flush_outbox(transport).sent == 2  # Alice writes in French
        (dead,) = [r for r in rows(bot) if r.status == "dead"]
        assert (dead.event, dead.to_email) == ("validation-requested", CAROL)
        assert (dead.last_error or "").startswith("cannot render: ")
        override.unlink()
        assert len(broken.retry_outbox(None)) == 1
        assert broken.flush_outbox(transport).sent == 1
    finally:
        broken.engine.dispose()
    assert transport.delivered[-1][1] == CAROL
    assert b"/v/" in transport.delivered[-1][2]
    assert {r.status for r in rows(bot)} == {"sent"}
