"""Mail in over real SMTP into ``mailbot serve``'s listener, and mail out through a
real SMTP smarthost."""

from __future__ import annotations

import asyncio
import signal
import smtplib
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from aiosmtpd.smtp import SMTP, Envelope
from aiosmtpd.smtp import Session as SmtpSession
from conftest import make_settings, reserve_port
from factories import ALICE, BOB, CAROL, MailFactory, outbox, refuse_inserts, seed_world
from servers import Smarthost, maildir_count, running, smarthost, wait_for
from servers import relay as relay_with
from sqlmodel import col, select
from test_entrypoint import MAILBOT, clean_environment

from mailbot.adapters.smtp_in import TRY_LATER, GroupCommitWriter, InboundHandler
from mailbot.adapters.smtp_out import SmtpTransport
from mailbot.clock import FixedClock
from mailbot.config import OutgoingSettings, Settings
from mailbot.domain import Party
from mailbot.intake import RawMail
from mailbot.outgoing.mailer import OutgoingMail
from mailbot.outgoing.outbox import LEASE, CommitPoint
from mailbot.service import Mailbot
from mailbot.storage.engine import transaction
from mailbot.storage.tables import InboundRow, OutboxRow


@pytest.fixture
def served(tmp_path: Path, database_url: str) -> Iterator[Mailbot]:
    """A bot with the standard world, on free ports, ready to be ``running``."""
    settings = make_settings(
        tmp_path,
        database_url,
        smtp={"port": reserve_port(), "max_message_bytes": 64 * 1024},
        web={"port": reserve_port()},
    )
    bot = Mailbot.from_settings(settings)
    seed_world(bot)
    yield bot
    bot.engine.dispose()


def smtp_send(
    settings: Settings, raw: bytes, sender: str = ALICE, to: str = "changes@bot.test"
) -> None:
    with smtplib.SMTP(settings.smtp.host, settings.smtp.port, timeout=60) as client:
        client.sendmail(sender, [to], raw)


def relay_settings(bot: Mailbot, port: int) -> OutgoingSettings:
    """``bot``'s outgoing settings, sending by SMTP to a relay on ``port``."""
    return bot.settings.outgoing.model_copy(update={"transport": "smtp", "port": port})


def test_a_request_by_smtp_sends_its_mails_within_seconds(
    served: Mailbot, mail: MailFactory
) -> None:
    with running(served):
        smtp_send(served.settings, mail(ALICE, "CHANGE example.com", f"tech: {CAROL}"))
        wait_for(lambda: maildir_count(served.settings.outgoing.maildir) == 3)
    assert sorted(m.event for m in outbox(served)) == [
        "request-opened",
        "validation-requested",
        "validation-requested",
    ]


def test_a_subject_sent_as_raw_utf8_is_quoted_back_as_written(served: Mailbot) -> None:
    """RFC 6532 mail carries its Subject as UTF-8 bytes; the error mail names it."""
    raw = (
        f"From: {BOB}\r\nTo: changes@bot.test\r\nSubject: Réponse à votre demande\r\n"
        "Message-ID: <raw-utf8@client.test>\r\nContent-Type: text/plain; charset=utf-8\r\n"
        "\r\nBonjour, où en est ma demande ?\r\n"
    ).encode()
    with running(served):
        smtp_send(served.settings, raw, sender=BOB)
        wait_for(lambda: maildir_count(served.settings.outgoing.maildir) == 1)
    (answer,) = outbox(served)
    assert answer.event == "error"
    assert "Réponse à votre demande" in answer.text
    assert "\ufffd" not in answer.text


def test_recipients_outside_our_domains_are_refused_at_rcpt(
    served: Mailbot, mail: MailFactory
) -> None:
    with running(served), pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        smtp_send(served.settings, mail(ALICE, "HELP"), to="someone@elsewhere.test")
    code, _ = refused.value.recipients["someone@elsewhere.test"]
    assert code == 550


def test_a_message_over_the_size_limit_is_refused_with_552(
    served: Mailbot, mail: MailFactory
) -> None:
    big = mail(ALICE, "HELP", "x" * 100 * 1024)
    with running(served), pytest.raises(smtplib.SMTPException) as refused:
        smtp_send(served.settings, big)
    assert "552" in str(refused.value)


def test_lines_longer_than_1000_octets_are_accepted_as_a_real_mta_accepts_them(
    served: Mailbot, mail: MailFactory
) -> None:
    """A webmail's header line of 1,242 characters, a body line of 20,000: 250, and read."""
    raw = mail(ALICE, "HELP", "HELP")
    headers, _, body = raw.partition(b"\r\n\r\n")
    long_header = b"X-Webmail-Trace: " + b"a=1; " * 245
    long_body_line = b"x" * 20_000
    raw = headers + b"\r\n" + long_header + b"\r\n\r\n" + body + long_body_line + b"\r\n"
    assert len(long_header) > 1_200
    with running(served):
        smtp_send(served.settings, raw)
        wait_for(lambda: maildir_count(served.settings.outgoing.maildir) == 1)
    assert [m.event for m in outbox(served)] == ["help"]


def test_a_line_longer_than_the_size_limit_is_refused_for_its_size_not_its_format(
    served: Mailbot, mail: MailFactory
) -> None:
    raw = mail(ALICE, "HELP", "HELP") + b"y" * (100 * 1024) + b"\r\n"
    settings = served.settings.smtp
    with running(served), smtplib.SMTP(settings.host, settings.port, timeout=60) as client:
        client.ehlo()
        client.mail(ALICE)  # no SIZE= announced: the limit is met in DATA
        client.rcpt("changes@bot.test")
        code, _ = client.data(raw)
    assert code == 552


def test_the_same_message_twice_acts_once(served: Mailbot, mail: MailFactory) -> None:
    raw = mail(ALICE, "CHANGE example.com", f"tech: {CAROL}")
    with running(served):
        smtp_send(served.settings, raw)
        smtp_send(served.settings, raw)
        wait_for(lambda: maildir_count(served.settings.outgoing.maildir) == 3)
    assert len(outbox(served)) == 3


LONG_DOMAIN = ".".join(["b" * 60] * 4) + ".test"
"""248 characters: with ``alice@``, the longest address a path may hold (254)."""


ENVELOPE_SENDERS = [
    ("<alice@customer.test>", 250, "alice@customer.test"),
    ("<alice@customer.test> SIZE=2000 BODY=8BITMIME", 250, "alice@customer.test"),
    ("<alice@customer.test>  SIZE=2000", 250, "alice@customer.test"),
    ("<alice@customer.test> (a comment) SIZE=2000", 250, "alice@customer.test"),
    ('<"alice smith"@customer.test>', 250, '"alice smith"@customer.test'),
    ("<@relay.test:alice@customer.test>", 250, "alice@customer.test"),
    ("<alice.o'brien+tag@customer.test>", 250, "alice.o'brien+tag@customer.test"),
    ("<>", 250, "<>"),
    ("<alice@@customer.test>", 553, None),
    ("<alice@customer.test", 250, "alice@customer.test"),
    ("<alice..smith@customer.test>", 250, "alice..smith@customer.test"),
    (f"<alice@{LONG_DOMAIN}>", 250, f"alice@{LONG_DOMAIN}"),
]


def test_envelope_senders_in_every_form_are_read_alike(served: Mailbot, mail: MailFactory) -> None:
    """The plain ``<local@domain>`` is read without the full address parser, and
    every other form (parameters, comments, quoting, routes, the null sender,
    malformed) by it: each gets the answer and the stored sender it always had."""
    with running(served), smtplib.SMTP("127.0.0.1", served.settings.smtp.port) as client:
        client.ehlo()
        for written, code, _ in ENVELOPE_SENDERS:
            assert client.docmd(f"MAIL FROM:{written}")[0] == code, written
            if code == 250:
                assert client.rcpt("changes@bot.test")[0] == 250
                assert client.data(mail(ALICE, "HELP"))[0] == 250
    with transaction(served.engine) as session:
        rows = session.exec(select(InboundRow).order_by(col(InboundRow.id))).all()
        kept = [row.envelope_from for row in rows]
    assert kept == [sender for _, code, sender in ENVELOPE_SENDERS if code == 250]


@pytest.mark.parametrize(
    "command",
    [
        "MAIL FROM:<ali\x00ce@customer.test>",
        "RCPT TO:<changes\x01@bot.test>",
        f"MAIL FROM:<alice.o@{LONG_DOMAIN}>",
        f'MAIL FROM:<"alice o"@{LONG_DOMAIN}>',
    ],
)
def test_an_envelope_address_no_path_may_hold_is_refused(
    served: Mailbot, mail: MailFactory, command: str
) -> None:
    """A control character, or more than a path's 256 octets (RFC 5321): 553,
    as any malformed address, and the session goes on. Before, PostgreSQL
    refused to store such a sender, and the client met 451 at every retry."""
    with running(served), smtplib.SMTP("127.0.0.1", served.settings.smtp.port) as client:
        client.ehlo()
        if command.startswith("RCPT"):
            assert client.mail(ALICE)[0] == 250
        assert client.docmd(command)[0] == 553
        client.rset()
        assert client.sendmail(ALICE, ["changes@bot.test"], mail(ALICE, "HELP")) == {}
        wait_for(lambda: maildir_count(served.settings.outgoing.maildir) == 1)
    with transaction(served.engine) as session:
        assert len(session.exec(select(InboundRow)).all()) == 1


def test_a_message_id_with_a_control_character_is_stored_and_acted_on(
    served: Mailbot, mail: MailFactory
) -> None:
    """A Message-ID holding a NUL is no Message-ID: the message is stored and
    answered (before, PostgreSQL refused it, and the client met 451 forever)."""
    raw = mail(ALICE, "HELP", message_id="<nul.placeholder@client.test>")
    raw = raw.replace(b"nul.placeholder", b"n\x00l")
    with running(served):
        smtp_send(served.settings, raw)
        smtp_send(served.settings, raw)  # and twice is still once
        wait_for(lambda: maildir_count(served.settings.outgoing.maildir) == 1)
    with transaction(served.engine) as session:
        rows = session.exec(select(InboundRow)).all()
    assert [(row.message_id, row.status) for row in rows] == [(None, "processed")]


@pytest.mark.parametrize("where", ["subject", "body"])
def test_a_command_with_a_control_character_is_answered_as_malformed(
    served: Mailbot, mail: MailFactory, where: str
) -> None:
    """A NUL in a command's words reads as a space: the sender is told the
    command is malformed (before, PostgreSQL refused the lookup of the service
    and the message failed unanswered)."""
    command = "CHANGE example.com"
    raw = mail(ALICE, command if where == "subject" else "Hello", f"{command}\ntech: {CAROL}")
    raw = raw.replace(b"CHANGE example.com", b"CHANGE example\x00.com")
    with running(served):
        smtp_send(served.settings, raw)
        wait_for(lambda: maildir_count(served.settings.outgoing.maildir) == 1)
    (answer,) = outbox(served)
    assert answer.event == "error"
    assert answer.header("X-Mailbot-Error") == "malformed-request"
    with transaction(served.engine) as session:
        assert [row.status for row in session.exec(select(InboundRow)).all()] == ["processed"]


def test_a_message_the_database_refuses_fails_alone_in_its_batch(
    bot: Mailbot, mail: MailFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Messages arriving together share a commit; one the database will not
    take (here a trigger refuses it) gets its 451 alone, the others are
    stored, and the log names the error without quoting the message."""
    refused = "refused@client.test"
    refuse_inserts(bot, "inbound_message", refused)
    raws = [
        mail(ALICE, "HELP", "first words"),
        mail(BOB, "HELP", "a body never to be logged", message_id=f"<{refused}>"),
        mail(CAROL, "HELP", "third words"),
    ]
    batches: list[int] = []

    async def run_now(function: Callable[..., object], *args: object) -> object:
        batches.append(len(args[0]))  # type: ignore[arg-type]
        return function(*args)

    async def scenario() -> list[int | BaseException]:
        writer = GroupCommitWriter(bot, run_now)
        writer.start()
        stores = (writer.store(RawMail(raw, "smtp")) for raw in raws)
        results = await asyncio.gather(*stores, return_exceptions=True)
        await writer.stop()
        return results

    first, second, third = asyncio.run(scenario())
    assert batches[0] == 3  # the three shared one commit, which failed
    assert isinstance(first, int)
    assert isinstance(third, int)
    assert isinstance(second, sa.exc.IntegrityError)
    with transaction(bot.engine) as session:
        stored = session.exec(select(InboundRow.message_id)).all()
    assert refused not in stored
    assert len(stored) == 2
    assert "could not store 1 message(s)" in caplog.text
    assert "never to be logged" not in caplog.text


def test_a_stored_but_unprocessed_message_is_processed_after_a_restart(
    served: Mailbot, mail: MailFactory
) -> None:
    # As if the process died right after its 250: the message is stored, not processed.
    served.store_inbound(mail(ALICE, "CHANGE example.com", f"tech: {CAROL}"), source="smtp")
    with running(served):
        wait_for(lambda: maildir_count(served.settings.outgoing.maildir) == 3)
    with transaction(served.engine) as session:
        assert session.get(InboundRow, 1).status == "processed"  # type: ignore[union-attr]


def impatient_bot(tmp_path: Path, database_url: str) -> Mailbot:
    """A bot on free ports whose SQLite writers give up on a lock after 0.2 s."""
    settings = make_settings(
        tmp_path,
        database_url,
        smtp={"port": reserve_port()},
        web={"port": reserve_port()},
        database={"busy_timeout_seconds": 0.2},
    )
    return Mailbot.from_settings(settings)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_message_that_cannot_be_stored_gets_451_and_nothing_internal(
    tmp_path: Path, database_url: str, mail: MailFactory
) -> None:
    bot = impatient_bot(tmp_path, database_url)
    with running(bot):
        locker = sqlite3.connect(database_url.removeprefix("sqlite:///"), isolation_level=None)
        locker.execute("BEGIN EXCLUSIVE")
        try:
            with pytest.raises(smtplib.SMTPDataError) as refused:
                smtp_send(bot.settings, mail(ALICE, "HELP"))
        finally:
            locker.execute("ROLLBACK")
            locker.close()
        assert refused.value.smtp_code == 451
        assert refused.value.smtp_error.decode() == TRY_LATER.removeprefix("451 ")
        smtp_send(bot.settings, mail(ALICE, "HELP"))  # once the database is back, it is accepted


def test_the_listener_is_busy_while_a_message_waits_for_its_commit(
    bot: Mailbot, world: object, mail: MailFactory
) -> None:
    """Acting in serve's own process waits for a pause in arrivals. In a burst
    every client may be silent at once, each waiting for its 250 while its
    batch commits: that wait is part of the burst, not a pause in it."""

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        commit = asyncio.Event()

        async def slow_commit(function: Callable[..., object], *args: object) -> object:
            await commit.wait()
            return function(*args)

        writer = GroupCommitWriter(bot, slow_commit)
        writer.start()
        handler = InboundHandler(writer, ["bot.test"], lambda inbound_id: None)
        session, envelope = SmtpSession(loop), Envelope()
        envelope.mail_from = ALICE
        rcpt = await handler.handle_RCPT(SMTP(handler), session, envelope, "changes@bot.test", [])
        assert rcpt.startswith("250")
        envelope.original_content = mail(ALICE, "HELP")
        data = loop.create_task(handler.handle_DATA(SMTP(handler), session, envelope))
        for _ in range(6000):  # until the writer holds it (at most a minute)
            if writer.queue.empty() and handler.activity.storing:
                break
            await asyncio.sleep(0.01)
        # However long the commit takes, the listener is not quiet meanwhile.
        assert handler.activity.quiet_for(loop.time() + 3600) == 0
        commit.set()
        assert (await data).startswith("250")
        assert handler.activity.quiet_for(loop.time() + 3600) >= 3599
        await writer.stop()

    asyncio.run(scenario())


def test_outgoing_smtp_retries_a_refusing_smarthost_and_loses_nothing(
    bot: Mailbot, world: object, mail: MailFactory, clock: FixedClock
) -> None:
    bot.receive(mail(ALICE, "CHANGE example.com", f"tech: {CAROL}"))
    with smarthost(refusals=4) as relay:
        transport = SmtpTransport(relay_settings(bot, relay.port))
        for _ in range(6):
            bot.flush_outbox(transport)
            clock.at += timedelta(hours=3)
    assert len(relay.received) == 3
    assert len({payload for _, _, payload in relay.received}) == 3
    assert sorted(rcpts[0] for _, rcpts, _ in relay.received) == [ALICE, ALICE, CAROL]
    # Every mail goes with a VERP bounce address naming its Message-ID.
    for sender, _, payload in relay.received:
        local = sender.partition("@")[0]
        assert local.startswith("changes+bounce-")
        assert local.removeprefix("changes+bounce-").encode() in payload


def test_a_permanent_refusal_marks_the_mail_dead(
    bot: Mailbot, world: object, mail: MailFactory
) -> None:
    bot.receive(mail(ALICE, "CHANGE example.com", f"tech: {CAROL}"))
    with smarthost(refusals=100, refusal="550 5.1.1 No such user") as relay:
        report = bot.flush_outbox(SmtpTransport(relay_settings(bot, relay.port)))
    assert report.dead == 3
    assert relay.received == []
    assert {m.row.status for m in outbox(bot)} == {"dead"}
    assert all("550" in (m.row.last_error or "") for m in outbox(bot))


def test_an_unreachable_smarthost_is_a_temporary_failure(
    bot: Mailbot, world: object, mail: MailFactory
) -> None:
    # A reserved port that nobody listens on: connections to it are refused.
    settings = relay_settings(bot, reserve_port())
    bot.receive(mail(ALICE, "CHANGE example.com", f"tech: {CAROL}"))
    report = bot.flush_outbox(SmtpTransport(settings))
    assert report.retried == 3
    assert {m.row.status for m in outbox(bot)} == {"queued"}


def test_one_flush_uses_one_smtp_session(bot: Mailbot, world: object, mail: MailFactory) -> None:
    bot.receive(mail(ALICE, "CHANGE example.com", f"tech: {CAROL}"))
    with smarthost() as relay:
        assert bot.flush_outbox(SmtpTransport(relay_settings(bot, relay.port))).sent == 3
    assert (len(relay.received), relay.sessions) == (3, 1)


@pytest.mark.parametrize("offered", [True, False])
def test_a_non_ascii_recipient_goes_with_smtputf8_or_fails_alone(
    bot: Mailbot, world: object, mail: MailFactory, offered: bool
) -> None:
    with transaction(bot.engine) as session:
        help_mail = OutgoingMail("help", Party(email="josé@exämple.test"), context={"commands": ()})
        bot.mailer.queue(session, help_mail, None)
    bot.receive(mail(ALICE, "CHANGE example.com", f"tech: {CAROL}"))
    with relay_with(Smarthost(), enable_SMTPUTF8=offered) as relay:
        report = bot.flush_outbox(SmtpTransport(relay_settings(bot, relay.port)))
    recipients = sorted(rcpts[0] for _, rcpts, _ in relay.received)
    (row,) = [m.row for m in outbox(bot) if m.to != ALICE and m.to != CAROL]
    if offered:
        assert (report.sent, report.dead) == (4, 0)
        assert recipients == sorted([ALICE, ALICE, CAROL, "josé@exämple.test"])
        assert row.status == "sent"
    else:
        assert (report.sent, report.dead) == (3, 1)
        assert recipients == [ALICE, ALICE, CAROL]
        assert row.status == "dead"
        assert "SMTPUTF8" in (row.last_error or "")


def trace_headers(route: str) -> dict[str, str]:
    return {
        "Received": f"from {route}.relay.test by mx.bot.test; Mon, 2 Mar 2026 09:0{len(route)}:00",
        "Return-Path": f"<bounce@{route}.test>",
        "Delivered-To": f"changes+{route}@bot.test",
        "X-Original-To": "changes@bot.test",
        "Authentication-Results": f"mx.bot.test; spf=pass smtp.mailfrom={route}.test",
        "ARC-Seal": f"i=1; a=rsa-sha256; d={route}.test; s=arc; b=abc{route}",
    }


def help_answers(bot: Mailbot) -> list[str]:
    """Who was sent a HELP answer, in order (a light query: tests poll it)."""
    with transaction(bot.engine) as session:
        query = select(OutboxRow.to_email).where(OutboxRow.event == "help")
        return list(session.exec(query.order_by(col(OutboxRow.id))).all())


def test_the_same_message_by_two_routes_acts_once(served: Mailbot, mail: MailFactory) -> None:
    first = mail(BOB, "HELP", headers=trace_headers("one"), message_id="<same@client.test>")
    again = mail(BOB, "HELP", headers=trace_headers("other"), message_id="<same@client.test>")
    assert first != again
    with running(served):
        smtp_send(served.settings, first, sender=BOB)
        smtp_send(
            served.settings, again.replace(b"\n", b"\r\n").replace(b"\r\r", b"\r"), sender=BOB
        )
        wait_for(lambda: help_answers(served))
        smtp_send(served.settings, mail(CAROL, "HELP"), sender=CAROL)  # processed after both
        wait_for(lambda: CAROL in help_answers(served))
    assert help_answers(served) == [BOB, CAROL]


def test_a_different_message_reusing_a_message_id_acts(served: Mailbot, mail: MailFactory) -> None:
    with running(served):
        for sender in (BOB, CAROL):
            smtp_send(served.settings, mail(sender, "HELP", message_id="<reused@x.test>"), sender)
        wait_for(lambda: len(help_answers(served)) == 2)
    assert sorted(help_answers(served)) == [BOB, CAROL]


def test_stored_mail_is_caught_up_without_a_restart_and_fresh_mail_goes_first(
    served: Mailbot, mail: MailFactory
) -> None:
    """A backlog larger than any batch (as after a crash), plus fresh mail meanwhile."""
    senders = [f"person{n}@backlog.test" for n in range(120)]
    for sender in senders:
        served.store_inbound(mail(sender, "HELP"), source="smtp")
    with running(served):
        smtp_send(served.settings, mail(BOB, "HELP"), sender=BOB)
        wait_for(lambda: BOB in help_answers(served), timeout=60)
        answered_before_fresh = len(help_answers(served)) - 1
        # Stored while serving, as by a `mailbot process` that died after its commit.
        served.store_inbound(mail(CAROL, "HELP"), source="cli")
        wait_for(lambda: len(help_answers(served)) == len(senders) + 2, timeout=60)
        wait_for(lambda: served.inbound_counts().get("received", 0) == 0)
    assert answered_before_fresh < len(senders)  # the fresh message did not wait for all
    assert sorted(help_answers(served)) == sorted([*senders, BOB, CAROL])


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_mail_that_met_a_locked_database_is_processed_once_it_is_free(
    tmp_path: Path, database_url: str, mail: MailFactory, caplog: pytest.LogCaptureFixture
) -> None:
    bot = impatient_bot(tmp_path, database_url)
    senders = [f"person{n}@locked.test" for n in range(60)]
    for sender in senders:
        bot.store_inbound(mail(sender, "HELP"), source="smtp")
    path = database_url.removeprefix("sqlite:///")
    locker = sqlite3.connect(path, isolation_level=None, timeout=60)
    reader = sqlite3.connect(path, isolation_level=None)

    def waiting() -> int:
        query = "SELECT count(*) FROM inbound_message WHERE status = 'received'"
        return int(reader.execute(query).fetchone()[0])

    try:
        locker.execute("BEGIN IMMEDIATE")  # writers wait 0.2 s, then fail; readers go on
        with running(bot):
            wait_for(lambda: "stored mail waits" in caplog.text)  # the rescuer met the lock
            assert waiting() == len(senders)  # nothing acted on, nothing given up as failed
            locker.execute("ROLLBACK")
            wait_for(lambda: waiting() == 0, timeout=60)
            wait_for(lambda: len(help_answers(bot)) == len(senders))
    finally:
        locker.close()
        reader.close()
        bot.engine.dispose()
    assert sorted(help_answers(bot)) == sorted(senders)


class SlowRelay(Smarthost):
    """A relay that takes its time over DATA, long enough for a SIGTERM to arrive."""

    def __init__(self) -> None:
        super().__init__()
        self.data_started = False

    async def handle_DATA(  # aiosmtpd's hook name
        self, server: SMTP, session: SmtpSession, envelope: Envelope
    ) -> str:
        self.data_started = True
        await asyncio.sleep(2)
        return await super().handle_DATA(server, session, envelope)


def test_stopping_finishes_the_mail_being_sent(
    tmp_path: Path, database_url: str, mail: MailFactory
) -> None:
    with relay_with(SlowRelay()) as relay:
        settings = make_settings(
            tmp_path,
            database_url,
            smtp={"port": reserve_port()},
            web={"port": reserve_port()},
            outgoing={"transport": "smtp", "port": relay.port},
        )
        bot = Mailbot.from_settings(settings)
        try:
            with running(bot):
                smtp_send(settings, mail(BOB, "HELP"), sender=BOB)
                wait_for(lambda: relay.data_started)
            # Stopped while the relay was still reading the mail: it was finished, not dropped.
            assert [rcpts for _, rcpts, _ in relay.received] == [[BOB]]
            assert [m.row.status for m in outbox(bot)] == ["sent"]
        finally:
            bot.engine.dispose()


class Cut(Smarthost):
    """A relay whose connection breaks after the final dot, before its answer."""

    async def handle_DATA(  # aiosmtpd's hook name
        self, server: SMTP, session: SmtpSession, envelope: Envelope
    ) -> str:
        if self.refusals > 0:
            self.refusals -= 1
            assert server.transport is not None
            server.transport.abort()
            return "250 2.0.0 OK (never heard)"
        return await super().handle_DATA(server, session, envelope)


@pytest.mark.parametrize("relay", ["refuses", "cuts"])
def test_a_mail_the_relay_does_not_take_at_the_final_dot_is_put_back(
    bot: Mailbot, world: object, mail: MailFactory, clock: FixedClock, relay: str
) -> None:
    """The row is marked sent before the final dot; a 451 or a broken connection
    after it puts the row back, its secret body too, and the next try delivers it."""
    bot.receive(mail(ALICE, "CHANGE example.com", f"tech: {CAROL}"))
    handler = Smarthost(refusals=3) if relay == "refuses" else Cut(refusals=3)
    with relay_with(handler):
        transport = SmtpTransport(relay_settings(bot, handler.port))
        assert bot.flush_outbox(transport).retried == 3
        assert {m.row.status for m in outbox(bot)} == {"queued"}
        token_mails = [m.row for m in outbox(bot) if m.event == "validation-requested"]
        assert token_mails
        for row in token_mails:
            assert row.payload is not None  # scrubbed at the commit point, written back
            assert row.sent_at is None
        clock.at += timedelta(hours=1)
        assert bot.flush_outbox(transport).sent == 3
    assert len(handler.received) == 3
    assert len({payload for _, _, payload in handler.received}) == 3
    assert {m.row.status for m in outbox(bot)} == {"sent"}


def test_a_sender_killed_before_the_final_dot_leaves_nothing_at_the_relay(
    bot: Mailbot, world: object, mail: MailFactory, clock: FixedClock
) -> None:
    """Dying at the commit point: the relay, never sent the final dot, keeps nothing;
    the mail goes once the claim's lease is over, and only then."""
    bot.receive(mail(ALICE, "CHANGE example.com", f"tech: {CAROL}"))

    class Killed(BaseException):
        """The process dies."""

    class DiesAtTheCommitPoint(SmtpTransport):
        def send(
            self,
            envelope_from: str,
            recipient: str,
            payload: bytes,
            commit_point: CommitPoint,
        ) -> None:
            def die(hand_over: Callable[[], None]) -> None:
                raise Killed

            super().send(envelope_from, recipient, payload, die)

    with smarthost() as relay:
        with pytest.raises(Killed):
            bot.flush_outbox(DiesAtTheCommitPoint(relay_settings(bot, relay.port)))
        assert relay.received == []
        clock.at += timedelta(minutes=1)
        assert bot.flush_outbox(SmtpTransport(relay_settings(bot, relay.port))).sent == 3
    assert len(relay.received) == len({payload for _, _, payload in relay.received}) == 3


HELD_LOCK = 4242
HELD_COMMITS = f"""
CREATE FUNCTION held_commit() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
    PERFORM pg_advisory_lock({HELD_LOCK}); PERFORM pg_advisory_unlock({HELD_LOCK});
    RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER held_commit AFTER UPDATE ON outbox
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
    WHEN (NEW.status = 'sent') EXECUTE FUNCTION held_commit();
"""
"""A commit that marks a mail sent waits inside the COMMIT, at the server, for
as long as the test holds an advisory lock (a busy disk, a busy machine)."""


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
@pytest.mark.parametrize("over", ["tcp", "unix socket"])
def test_a_sender_killed_while_its_commit_is_under_way_has_handed_the_mail_over(
    bot: Mailbot,
    world: object,
    mail: MailFactory,
    clock: FixedClock,
    database_url: str,
    tmp_path: Path,
    over: str,
) -> None:
    """The final dot goes right behind the COMMIT that marks a mail sent, not
    after its answer: while the server is still inside that commit, the relay
    has the mail, and a SIGKILL of the sender then loses nothing. Nothing is
    sent twice either. The same whether the sender reaches PostgreSQL over TCP
    or a Unix socket. (How soon behind: the sender's next turn on the CPU,
    which on a busy machine no test can bound.)"""
    bot.receive(mail(ALICE, "CHANGE example.com", f"tech: {CAROL}"))
    with bot.engine.begin() as connection:
        connection.exec_driver_sql(HELD_COMMITS)
        if over == "unix socket":
            database_url = unix_socket_url(connection, database_url)
    with smarthost() as relay, bot.engine.connect() as holder:
        holder.exec_driver_sql(f"SELECT pg_advisory_lock({HELD_LOCK})")
        workdir = tmp_path / "sender"
        workdir.mkdir()
        (workdir / "mailbot.toml").write_text(
            f'[bot]\naddress = "{bot.settings.bot.address}"\nbase_url = "https://bot.test"\n'
            f'[database]\nurl = "{database_url}"\n'
            f'[outgoing]\ntransport = "smtp"\nhost = "127.0.0.1"\nport = {relay.port}\n'
        )
        sender = subprocess.Popen(
            [str(MAILBOT), "outbox", "flush"], cwd=workdir, env=clean_environment()
        )
        try:
            wait_for(lambda: committing(bot) > 0, timeout=60)
            wait_for(lambda: len(relay.received) == 1, timeout=60)  # the commit still waits
            assert committing(bot) == 1
            sender.send_signal(signal.SIGKILL)
        finally:
            sender.kill()
            sender.wait()
            holder.exec_driver_sql(f"SELECT pg_advisory_unlock({HELD_LOCK})")
        wait_for(lambda: committing(bot) == 0, timeout=60)  # the server finishes it
        assert len(relay.received) == 1
        with bot.engine.begin() as connection:
            connection.exec_driver_sql("DROP TRIGGER held_commit ON outbox")
        clock.at = datetime.now(UTC) + LEASE  # the killed sender's claims have run out
        assert bot.flush_outbox(SmtpTransport(relay_settings(bot, relay.port))).sent == 2
    assert len(relay.received) == len({payload for _, _, payload in relay.received}) == 3
    assert {m.row.status for m in outbox(bot)} == {"sent"}


FAILING_COMMIT = """
CREATE SEQUENCE commits_marking_sent;
CREATE FUNCTION fail_first() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF nextval('commits_marking_sent') = 1 THEN
        RAISE EXCEPTION 'could not write to the log: no space left on device';
    END IF;
    RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER fail_first AFTER UPDATE ON outbox
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
    WHEN (NEW.status = 'sent') EXECUTE FUNCTION fail_first();
"""
"""The first commit that marks a mail sent fails at the server, after the
sender wrote its final dot (a sequence, which no rollback undoes, counts them)."""


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_commit_that_fails_after_the_final_dot_does_not_send_the_mail_twice(
    bot: Mailbot, world: object, mail: MailFactory, clock: FixedClock
) -> None:
    """The relay took the mail while its COMMIT failed: the mail is marked sent
    in a commit of its own rather than put back to be sent again."""
    bot.receive(mail(ALICE, "CHANGE example.com", f"tech: {CAROL}"))
    with bot.engine.begin() as connection:
        connection.exec_driver_sql(FAILING_COMMIT)
    with smarthost() as relay:
        transport = SmtpTransport(relay_settings(bot, relay.port))
        assert bot.flush_outbox(transport).sent == 3
        clock.at += timedelta(hours=1)
        assert bot.flush_outbox(transport).sent == 0
    assert len(relay.received) == len({payload for _, _, payload in relay.received}) == 3
    assert {m.row.status for m in outbox(bot)} == {"sent"}
    with bot.engine.connect() as connection:
        marked = connection.exec_driver_sql("SELECT last_value FROM commits_marking_sent")
        assert marked.scalar_one() == 4  # the failed one, then the three that held


def unix_socket_url(connection: sa.Connection, tcp_url: str) -> str:
    """The same database as ``tcp_url``, through the server's Unix socket."""
    directory = connection.exec_driver_sql("SHOW unix_socket_directories").scalar_one()
    port = connection.exec_driver_sql("SHOW port").scalar_one()
    url = sa.make_url(tcp_url)
    return f"postgresql+psycopg://{url.username}@/{url.database}?host={directory}&port={port}"


def committing(bot: Mailbot) -> int:
    """How many sessions are inside a COMMIT held by ``HELD_COMMITS``."""
    with bot.engine.connect() as connection:
        return int(
            connection.exec_driver_sql(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'advisory'"
            ).scalar_one()
        )
